package privtest

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// RoleEnv names the environment variable that turns a test binary into a
// helper process (see RunRole).
const RoleEnv = "MESHLET_TEST_ROLE"

// RunRole lets a test binary re-executed by a test act as a small client
// program inside the meshed cgroup. Call it first in TestMain; it returns
// false when the binary runs as a normal test binary.
//
// Roles:
//
//	dial ADDR MSG  connect, send MSG, half-close, print the reply
func RunRole() bool {
	role := os.Getenv(RoleEnv)
	if role == "" {
		return false
	}
	args := os.Args[1:]
	switch role {
	case "dial":
		if err := dial(args); err != nil {
			fmt.Fprintln(os.Stderr, "dial:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown role", role)
		os.Exit(2)
	}
	os.Exit(0)
	return true
}

func dial(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: dial ADDR MSG")
	}
	c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, args[1]); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	fmt.Print(string(reply))
	return nil
}
