package config

import (
	"strings"
	"testing"
)

func TestDefaultParsesAndHasSampleServices(t *testing.T) {
	c := Default()
	if c.Proxy.Listen != DefaultProxyListen || c.Admin.Listen != DefaultAdminListen {
		t.Fatalf("listeners %q %q", c.Proxy.Listen, c.Admin.Listen)
	}
	set, err := c.Resources()
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Listeners) != 2 || len(set.Clusters) != 2 || len(set.Endpoints) != 2 {
		t.Fatalf("default resources: %d listeners %d clusters %d endpoints", len(set.Listeners), len(set.Clusters), len(set.Endpoints))
	}
	if !c.Capture.IntoProxyOn() || c.Capture.IntoApp || !c.Capture.UpstreamOn() {
		t.Fatalf("default directions %+v", c.Capture)
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]string{
		"unknown field":      "capture:\n  cgroupp: x\n",
		"bad acceleration":   "capture:\n  acceleration: fast\n",
		"ipv6 proxy":         "proxy:\n  listen: '[::1]:15001'\n",
		"bad admin":          "admin:\n  listen: nope\n",
		"not yaml":           "capture: [",
		"bad envoy resource": "static_resources:\n  listeners:\n  - name: x\n    bogus_field: 1\n",
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := Parse([]byte(in))
			if err == nil {
				_, err = c.Resources()
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
		})
	}
}

func TestAccelerationAcceptsYAMLBooleans(t *testing.T) {
	for in, want := range map[string]AccelMode{"on": "on", "off": "off", "auto": "auto", "true": "on", "'on'": "on"} {
		c, err := Parse([]byte("capture:\n  acceleration: " + in + "\n"))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if c.Capture.Acceleration != want {
			t.Fatalf("%s: got %q want %q", in, c.Capture.Acceleration, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(DefaultYAML())
	f.Add([]byte("capture:\n  acceleration: on\n"))
	f.Add([]byte(`{"proxy":{"listen":"127.0.0.1:1"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse returned a config that fails Validate: %v", err)
		}
		_, _ = c.Resources()
	})
}

func TestProcs(t *testing.T) {
	for _, tc := range []struct {
		concurrency, current int
		env                  bool
		want                 int
	}{
		{0, 8, false, DefaultConcurrency},
		{0, 1, false, 1},
		{2, 8, false, 2},
		{4, 2, false, 2}, // never more than the runtime chose (CPUs, or the container's CPU limit)
		{4, 8, true, 8},  // GOMAXPROCS set: the runtime's choice stands
		{1, 3, true, 3},
	} {
		c := Default()
		c.Proxy.Concurrency = tc.concurrency
		if got := c.Procs(tc.current, tc.env); got != tc.want {
			t.Errorf("concurrency %d, runtime %d, env %v: %d, want %d", tc.concurrency, tc.current, tc.env, got, tc.want)
		}
	}
	c := Default()
	c.Proxy.Concurrency = -1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "proxy.concurrency") {
		t.Errorf("negative concurrency: %v", err)
	}
}
