package xds

import (
	"testing"
	"time"
)

func TestIstioIdentityNode(t *testing.T) {
	n, err := IstioIdentity{PodIP: "10.1.2.3", PodName: "meshlet-abc", Namespace: "meshlet-system",
		ServiceAccount: "meshlet", IstioVersion: "1.24.0", NodeName: "node-1", Labels: map[string]string{"app": "meshlet"}}.Node()
	if err != nil {
		t.Fatal(err)
	}
	if want := "sidecar~10.1.2.3~meshlet-abc.meshlet-system~meshlet-system.svc.cluster.local"; n.GetId() != want {
		t.Fatalf("id = %q, want %q", n.GetId(), want)
	}
	md := n.GetMetadata().GetFields()
	for k, v := range map[string]string{"NAMESPACE": "meshlet-system", "CLUSTER_ID": "Kubernetes", "INSTANCE_IPS": "10.1.2.3",
		"ISTIO_VERSION": "1.24.0", "INTERCEPTION_MODE": "REDIRECT", "MESH_ID": "cluster.local", "SERVICE_ACCOUNT": "meshlet", "NODE_NAME": "node-1"} {
		if got := md[k].GetStringValue(); got != v {
			t.Errorf("metadata %s = %q, want %q", k, got, v)
		}
	}
	if md["LABELS"].GetStructValue().GetFields()["app"].GetStringValue() != "meshlet" {
		t.Error("labels missing")
	}
	if n.GetCluster() != "Kubernetes" {
		t.Errorf("cluster = %q", n.GetCluster())
	}
	for _, bad := range []IstioIdentity{
		{PodIP: "nope", PodName: "p", Namespace: "n"},
		{PodIP: "10.0.0.1", Namespace: "n"},
		{PodIP: "10.0.0.1", PodName: "p~x", Namespace: "n"},
		{PodIP: "10.0.0.1", PodName: "p", Namespace: "n", InterceptionMode: "MAGIC"},
	} {
		if _, err := bad.Node(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	if err := (&Config{Node: NewNode("n", "", nil)}).setDefaults(); err == nil {
		t.Error("empty address accepted")
	}
	if err := (&Config{Address: "x"}).setDefaults(); err == nil {
		t.Error("missing node accepted")
	}
	if err := (&Config{Address: "x", Node: NewNode("n", "", nil), OnDemand: true}).setDefaults(); err == nil {
		t.Error("on-demand without delta accepted")
	}
	c := Config{Address: "x", Node: NewNode("n", "", nil)}
	if err := c.setDefaults(); err != nil || c.MaxRecvMsgSize != DefaultMaxRecvMsgSize || c.WarmTimeout != DefaultWarmTimeout {
		t.Errorf("defaults: %v %+v", err, c)
	}
}

func TestBackoffBoundsAndJitter(t *testing.T) {
	b := backoff{base: 100 * time.Millisecond, max: time.Second}
	distinct := map[time.Duration]bool{}
	for i := 0; i < 50; i++ {
		d := b.next()
		if d < 50*time.Millisecond || d > time.Second {
			t.Fatalf("attempt %d: %v out of bounds", i, d)
		}
		distinct[d] = true
	}
	if len(distinct) < 10 {
		t.Fatalf("no jitter: %d distinct delays", len(distinct))
	}
	b.reset()
	if d := b.next(); d > 100*time.Millisecond {
		t.Fatalf("after reset: %v", d)
	}
}

func TestTokenCredentials(t *testing.T) {
	path := t.TempDir() + "/token"
	tc := tokenCredentials{path: path}
	if _, err := tc.GetRequestMetadata(t.Context()); err == nil {
		t.Fatal("missing token file accepted")
	}
	if err := writeFile(path, " tok123\n"); err != nil {
		t.Fatal(err)
	}
	md, err := tc.GetRequestMetadata(t.Context())
	if err != nil || md["authorization"] != "Bearer tok123" {
		t.Fatalf("md = %v, %v", md, err)
	}
}
