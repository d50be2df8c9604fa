package sockmap

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNoCgroup2 means the host has no cgroup v2 hierarchy mounted.
var ErrNoCgroup2 = errors.New("no cgroup2 file system mounted (checked /proc/self/mountinfo)")

// Cgroup2Mount returns the mount point of the cgroup v2 hierarchy, read from
// /proc/self/mountinfo. Unified hosts mount it at /sys/fs/cgroup, hybrid
// hosts at /sys/fs/cgroup/unified.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return cgroup2MountFrom(f)
}

func cgroup2MountFrom(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// 36 35 98:0 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		fsType, _, _ := strings.Cut(post, " ")
		if fsType != "cgroup2" {
			continue
		}
		fields := strings.Fields(pre)
		if len(fields) < 5 {
			continue
		}
		return unescapeMountPath(fields[4]), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", ErrNoCgroup2
}

// unescapeMountPath undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ResolveCgroup checks that path names a directory on a cgroup v2 file
// system and returns it cleaned. A relative path is taken relative to the
// cgroup2 mount point. It refuses the root of the hierarchy: meshlet attaches
// to the cgroup that holds the meshed workloads, never to the whole host.
func ResolveCgroup(path string) (string, error) {
	if path == "" {
		return "", errors.New("no cgroup given: set the cgroup to mesh (a cgroup v2 directory)")
	}
	if !filepath.IsAbs(path) {
		mnt, err := Cgroup2Mount()
		if err != nil {
			return "", err
		}
		path = filepath.Join(mnt, path)
	}
	path = filepath.Clean(path)
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "", fmt.Errorf("cgroup %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return "", fmt.Errorf("cgroup %s is not on a cgroup2 file system", path)
	}
	if _, err := os.Stat(filepath.Join(path, "..", "cgroup.procs")); err != nil {
		// The parent is not a cgroup: this is the hierarchy's root.
		return "", fmt.Errorf("cgroup %s is the root of the cgroup2 hierarchy: refusing to capture the whole host", path)
	}
	return path, nil
}
