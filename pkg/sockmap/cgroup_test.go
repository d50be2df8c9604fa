package sockmap

import (
	"errors"
	"strings"
	"testing"
)

func TestCgroup2MountFromMountinfo(t *testing.T) {
	unified := "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
	hybrid := "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n" +
		"26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw\n" +
		"27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
	escaped := "30 23 0:26 / /mnt/my\\040cgroup rw - cgroup2 cgroup2 rw\n"
	for in, want := range map[string]string{unified: "/sys/fs/cgroup", hybrid: "/sys/fs/cgroup/unified", escaped: "/mnt/my cgroup"} {
		got, err := cgroup2MountFrom(strings.NewReader(in))
		if err != nil || got != want {
			t.Errorf("got %q, %v; want %q", got, err, want)
		}
	}
	if _, err := cgroup2MountFrom(strings.NewReader("27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")); !errors.Is(err, ErrNoCgroup2) {
		t.Errorf("v1 only: %v", err)
	}
}

func FuzzCgroup2MountFrom(f *testing.F) {
	f.Add("26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
	f.Add("x - cgroup2\n")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = cgroup2MountFrom(strings.NewReader(s))
	})
}
