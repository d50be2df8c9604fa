package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/vm/vmlog"
)

func parse(t *testing.T, log string) *vmlog.Result {
	t.Helper()
	r, err := vmlog.Parse(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestClassify(t *testing.T) {
	const ok = "VMTEST-BOOTED uptime=1\nVMTEST-RESULT name=a rc=0 seconds=1\nVMTEST-RESULT overall rc=0\n"
	cases := []struct {
		name        string
		log         string
		timedOut    bool
		interrupted bool
		want        string
	}{
		{"pass", ok, false, false, "pass"},
		{"timeout wins over markers", ok, true, false, "timeout"},
		{"interrupted", ok, false, true, "error"},
		{"panic", "VMTEST-BOOTED uptime=1\nKernel panic - not syncing: x\n", false, false, "panic"},
		{"no marker", "VMTEST-BOOTED uptime=1\nVMTEST-START name=a\n", false, false, "no-marker"},
		{"binary failed", "VMTEST-RESULT name=a rc=2 seconds=1\nVMTEST-RESULT overall rc=1\n", false, false, "fail"},
		{"nothing ran", "VMTEST-SETUP-ERROR no test binaries under /tests\nVMTEST-RESULT overall rc=125\n", false, false, "fail"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, reason := classify(parse(t, c.log), c.timedOut, c.interrupted, time.Minute, nil)
			if got != c.want {
				t.Fatalf("classify = %s (%s), want %s", got, reason, c.want)
			}
			if got != "pass" && reason == "" {
				t.Error("a failure needs a reason")
			}
		})
	}
	_, reason := classify(parse(t, "VMTEST-RESULT name=a rc=2 seconds=1\nVMTEST-RESULT name=b rc=0 seconds=1\nVMTEST-RESULT overall rc=1\n"), false, false, time.Minute, nil)
	if reason != "a rc=2" {
		t.Errorf("reason %q, want the failed binary", reason)
	}
}

func TestConcat(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.WriteFile(a, []byte("base"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, []byte("tests"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if err := concat(out, a, b); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); string(got) != "basetests" {
		t.Fatalf("concat = %q", got)
	}
	if err := concat(out, a, filepath.Join(dir, "missing")); err == nil {
		t.Fatal("concat of a missing file succeeded")
	}
}

func TestPrefixWriter(t *testing.T) {
	var buf bytes.Buffer
	w := &prefixWriter{w: &buf, prefix: "[6.1] "}
	if _, err := w.Write([]byte("one\ntwo\n")); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != "[6.1] one\n[6.1] two\n" {
		t.Fatalf("got %q", got)
	}
}

func TestPrintTable(t *testing.T) {
	s := &summary{Kernels: []kernelResult{
		{Key: "6.1", Release: "6.1.0-56-cloud-amd64", Result: "pass", BootSeconds: 2.5, WallSeconds: 4.1,
			Guest: parse(t, "VMTEST-RESULT name=smoke rc=0 seconds=1\nVMTEST-RESULT overall rc=0\n")},
		{Key: "5.10", Result: "timeout", Reason: "no overall result"},
	}}
	var buf bytes.Buffer
	printTable(&buf, s)
	out := buf.String()
	for _, want := range []string{"KERNEL", "6.1.0-56-cloud-amd64", "PASS", "smoke:0", "TIMEOUT", "no overall result"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
