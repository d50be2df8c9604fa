package vmlog

import (
	"encoding/json"
	"strings"
	"testing"
)

const passingLog = "SeaBIOS noise\r\n" +
	"\x1bc\x1b[?7l\x1b[2JVMTEST-BOOTED uptime=4.09 kernel=6.12.95+deb12-cloud-amd64\r\n" +
	"VMTEST-MODULES loaded=19 failed=[]\r\n" +
	"VMTEST-START name=test_vm_smoke uptime=5.23\r\n" +
	"=== RUN   TestKernelFeatures\r\n" +
	"MESHLET-FEATURE name=prog/sock_ops status=ok min=4.13 detail=\"\"\r\n" +
	"MESHLET-FEATURE name=bpf_link/sockmap_sk_msg status=unsupported min=6.10 detail=\"not supported: invalid argument\"\r\n" +
	"VMTEST-RESULT name=test_vm_smoke rc=0 seconds=0.28\r\n" +
	"VMTEST-KERNEL-WARNINGS count=0\r\n" +
	"VMTEST-RESULT overall rc=0\r\n" +
	"[    5.9] reboot: Power down\r\n"

func TestParsePassing(t *testing.T) {
	r, err := Parse(strings.NewReader(passingLog))
	if err != nil {
		t.Fatal(err)
	}
	if !r.Passed() {
		t.Fatalf("want passed, got %+v", r)
	}
	if !r.Booted || r.BootUptime != 4.09 || r.Kernel != "6.12.95+deb12-cloud-amd64" {
		t.Errorf("boot fields: %+v", r)
	}
	if r.ModulesLoaded != 19 || r.ModuleFailures != "" {
		t.Errorf("modules: %d %q", r.ModulesLoaded, r.ModuleFailures)
	}
	if len(r.Binaries) != 1 || r.Binaries[0] != (Binary{Name: "test_vm_smoke", RC: 0, Seconds: 0.28}) {
		t.Errorf("binaries: %+v", r.Binaries)
	}
	if r.Running != "" {
		t.Errorf("running = %q after its result", r.Running)
	}
	want := []Feature{
		{Name: "prog/sock_ops", Status: "ok", Min: "4.13"},
		{Name: "bpf_link/sockmap_sk_msg", Status: "unsupported", Min: "6.10", Detail: "not supported: invalid argument"},
	}
	if len(r.Features) != len(want) || r.Features[0] != want[0] || r.Features[1] != want[1] {
		t.Errorf("features: %+v", r.Features)
	}
}

func TestParseFailures(t *testing.T) {
	cases := map[string]string{
		"binary failed":                       "VMTEST-BOOTED uptime=1\nVMTEST-START name=a\nVMTEST-RESULT name=a rc=1 seconds=1\nVMTEST-RESULT overall rc=1\n",
		"overall nonzero despite binaries ok": "VMTEST-RESULT name=a rc=0 seconds=1\nVMTEST-RESULT overall rc=1\n",
		"no marker (hang)":                    "VMTEST-BOOTED uptime=1\nVMTEST-START name=a\n",
		"panic":                               "VMTEST-BOOTED uptime=1\nKernel panic - not syncing: Attempted to kill init!\n",
		"no binaries":                         "VMTEST-SETUP-ERROR no test binaries under /tests\nVMTEST-RESULT overall rc=0\n",
		"garbage rc":                          "VMTEST-RESULT name=a rc=zero seconds=1\nVMTEST-RESULT overall rc=0\n",
		"empty":                               "",
	}
	for name, log := range cases {
		t.Run(name, func(t *testing.T) {
			r, err := Parse(strings.NewReader(log))
			if err != nil {
				t.Fatal(err)
			}
			if r.Passed() {
				t.Fatalf("log %q must not pass: %+v", log, r)
			}
		})
	}
	r, _ := Parse(strings.NewReader(cases["no marker (hang)"]))
	if r.Running != "a" {
		t.Errorf("running = %q, want a", r.Running)
	}
	r, _ = Parse(strings.NewReader(cases["panic"]))
	if !r.Panic {
		t.Error("panic not detected")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(passingLog)
	f.Add("VMTEST-RESULT overall rc=0\nVMTEST-RESULT name= rc=\n")
	f.Add("MESHLET-FEATURE name=x status=ok min=1 detail=\"\\x\"\n")
	f.Add("VMTEST-MODULES loaded=-1 failed=[veth(No such file)]\n")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(strings.NewReader(s))
		if err != nil {
			return
		}
		// Invariants: passing needs the overall marker; the result always encodes.
		if r.Passed() && (r.Overall == nil || len(r.Binaries) == 0) {
			t.Fatalf("passed without marker or binaries: %+v", r)
		}
		if _, err := json.Marshal(r); err != nil {
			t.Fatalf("result does not encode: %v", err)
		}
		if !strings.Contains(s, "VMTEST-RESULT") && r.Overall != nil {
			t.Fatalf("overall set without a RESULT marker")
		}
	})
}
