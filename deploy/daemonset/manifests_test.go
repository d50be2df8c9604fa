package daemonset

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/pkg/config"
)

// manifest is one decoded YAML document.
type manifest struct {
	file string
	kind string
	obj  any
}

// typeMeta is what every document must start with.
type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// newObject returns an empty typed object for apiVersion/kind, or nil if the kind is not expected here.
func newObject(apiVersion, kind string) any {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}
	case "apps/v1/DaemonSet":
		return &appsv1.DaemonSet{}
	case "rbac.authorization.k8s.io/v1/ClusterRole":
		return &rbacv1.ClusterRole{}
	case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}
	case "rbac.authorization.k8s.io/v1/Role":
		return &rbacv1.Role{}
	case "rbac.authorization.k8s.io/v1/RoleBinding":
		return &rbacv1.RoleBinding{}
	}
	return nil
}

// splitDocuments splits a multi-document YAML stream on "---" lines, dropping empty documents.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if len(bytes.TrimSpace(stripComments(cur.Bytes()))) > 0 {
			docs = append(docs, slices.Clone(cur.Bytes()))
		}
		cur.Reset()
	}
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if t := bytes.TrimRight(line, " \t\r\n"); bytes.Equal(t, []byte("---")) {
			flush()
			continue
		}
		cur.Write(line)
	}
	flush()
	return docs
}

func stripComments(doc []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out.Write(line)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

// decodeStrict decodes one YAML document into its k8s.io/api type, rejecting unknown fields, duplicate
// keys and trailing data.
func decodeStrict(doc []byte) (string, any, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return "", nil, fmt.Errorf("yaml: %w", err)
	}
	var tm typeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return "", nil, fmt.Errorf("type meta: %w", err)
	}
	obj := newObject(tm.APIVersion, tm.Kind)
	if obj == nil {
		return "", nil, fmt.Errorf("unexpected apiVersion %q kind %q", tm.APIVersion, tm.Kind)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return "", nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	if dec.More() {
		return "", nil, fmt.Errorf("%s: trailing data after the object", tm.Kind)
	}
	return tm.Kind, obj, nil
}

func loadManifests(t *testing.T) []manifest {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatalf("glob manifests: %v", err)
	}
	if len(files) == 0 {
		t.Fatal("no *.yaml manifests next to the test")
	}
	sort.Strings(files)
	var out []manifest
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("read %s: %v", f, err)
		}
		for i, doc := range splitDocuments(data) {
			kind, obj, err := decodeStrict(doc)
			if err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			out = append(out, manifest{file: f, kind: kind, obj: obj})
		}
	}
	return out
}

func only[T any](t *testing.T, ms []manifest) T {
	t.Helper()
	var found []T
	for _, m := range ms {
		if o, ok := m.obj.(T); ok {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, found %d", zero, len(found))
	}
	return found[0]
}

const namespace = "meshlet-system"

func TestManifestsDecodeStrictly(t *testing.T) {
	ms := loadManifests(t)
	kinds := map[string]int{}
	for _, m := range ms {
		kinds[m.kind]++
		// Everything namespaced lives in meshlet-system.
		switch o := m.obj.(type) {
		case *corev1.ServiceAccount:
			checkNS(t, m.file, o.Namespace)
		case *corev1.ConfigMap:
			checkNS(t, m.file, o.Namespace)
		case *appsv1.DaemonSet:
			checkNS(t, m.file, o.Namespace)
		case *rbacv1.Role:
			checkNS(t, m.file, o.Namespace)
		case *rbacv1.RoleBinding:
			checkNS(t, m.file, o.Namespace)
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"} {
		if kinds[k] != 1 {
			t.Errorf("want one %s, have %d", k, kinds[k])
		}
	}
	if ns := only[*corev1.Namespace](t, ms); ns.Name != namespace {
		t.Errorf("namespace %q, want %q", ns.Name, namespace)
	}
}

func checkNS(t *testing.T, file, ns string) {
	t.Helper()
	if ns != namespace {
		t.Errorf("%s: namespace %q, want %q", file, ns, namespace)
	}
}

func agentContainer(t *testing.T, ds *appsv1.DaemonSet) *corev1.Container {
	t.Helper()
	for i := range ds.Spec.Template.Spec.Containers {
		if c := &ds.Spec.Template.Spec.Containers[i]; c.Name == "node-agent" {
			return c
		}
	}
	t.Fatal("no node-agent container")
	return nil
}

func TestDaemonSetInvariants(t *testing.T) {
	ms := loadManifests(t)
	ds := only[*appsv1.DaemonSet](t, ms)
	sa := only[*corev1.ServiceAccount](t, ms)
	cm := only[*corev1.ConfigMap](t, ms)
	spec := ds.Spec.Template.Spec

	// Selector must select the template, or the API server rejects the DaemonSet.
	if ds.Spec.Selector == nil || len(ds.Spec.Selector.MatchLabels) == 0 {
		t.Fatal("selector.matchLabels empty")
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if got := ds.Spec.Template.Labels[k]; got != v {
			t.Errorf("selector %s=%s does not match template label %q", k, v, got)
		}
	}
	if len(ds.Spec.Selector.MatchExpressions) != 0 {
		t.Error("selector.matchExpressions: keep the selector to matchLabels")
	}

	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType ||
		ds.Spec.UpdateStrategy.RollingUpdate == nil || ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable == nil ||
		ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.String() != "1" {
		t.Errorf("updateStrategy: want RollingUpdate with maxUnavailable 1, got %+v", ds.Spec.UpdateStrategy)
	}
	if !spec.HostNetwork {
		t.Error("hostNetwork must be true: the proxy and admin bind the node's loopback")
	}
	if spec.HostPID || spec.HostIPC {
		t.Error("hostPID/hostIPC must be false")
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy %q, want ClusterFirstWithHostNet with hostNetwork", spec.DNSPolicy)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", spec.PriorityClassName)
	}
	if spec.ServiceAccountName != sa.Name {
		t.Errorf("serviceAccountName %q, ServiceAccount is %q", spec.ServiceAccountName, sa.Name)
	}
	tolerAll := false
	for _, tol := range spec.Tolerations {
		if tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == "" {
			tolerAll = true
		}
	}
	if !tolerAll {
		t.Errorf("tolerations must include {operator: Exists} (all taints): %+v", spec.Tolerations)
	}

	c := agentContainer(t, ds)
	if c.Image == "" || len(c.Command) == 0 {
		t.Error("node-agent: image and command required")
	}

	// Capabilities: precise set, no privilege.
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("node-agent: securityContext.capabilities missing")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("node-agent must not be privileged (capabilities instead)")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("node-agent: allowPrivilegeEscalation must be false")
	}
	if !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Error("node-agent: capabilities.drop must contain ALL")
	}
	var add []string
	for _, cp := range sc.Capabilities.Add {
		add = append(add, string(cp))
	}
	sort.Strings(add)
	if want := []string{"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"}; !slices.Equal(add, want) {
		t.Errorf("node-agent capabilities.add %v, want %v", add, want)
	}
	if sc.AppArmorProfile == nil || sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeUnconfined {
		t.Error("node-agent: AppArmor must be Unconfined (default profile denies writes to /sys/fs/bpf)")
	}

	// Downward API environment.
	wantEnv := map[string]string{
		"NODE_NAME":     "spec.nodeName",
		"POD_NAME":      "metadata.name",
		"POD_NAMESPACE": "metadata.namespace",
		"INSTANCE_IP":   "status.podIP",
	}
	for _, e := range c.Env {
		if want, ok := wantEnv[e.Name]; ok {
			if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != want {
				t.Errorf("env %s: want fieldRef %s", e.Name, want)
			}
			delete(wantEnv, e.Name)
		}
	}
	for name := range wantEnv {
		t.Errorf("env %s missing", name)
	}
	// The Go soft memory limit follows the container's memory limit.
	memLimit := false
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" {
			rf := e.ValueFrom
			memLimit = rf != nil && rf.ResourceFieldRef != nil && rf.ResourceFieldRef.Resource == "limits.memory" &&
				rf.ResourceFieldRef.ContainerName == c.Name
		}
	}
	if _, ok := c.Resources.Limits["memory"]; !ok || !memLimit {
		t.Error("node-agent: GOMEMLIMIT must come from the container's limits.memory (resourceFieldRef), and the limit must be set")
	}

	// Probes.
	rp := c.ReadinessProbe
	if rp == nil || rp.HTTPGet == nil || rp.HTTPGet.Host != "127.0.0.1" || rp.HTTPGet.Port.IntValue() != 15000 ||
		rp.HTTPGet.Path != "/ready" {
		t.Errorf("readinessProbe: want GET http://127.0.0.1:15000/ready, got %+v", rp)
	}
	if lp := c.LivenessProbe; lp != nil && lp.HTTPGet != nil && lp.HTTPGet.Path == "/ready" {
		t.Error("livenessProbe must not use /ready: a node without config would be restarted forever")
	}
	for _, p := range c.Ports {
		if p.HostPort != 0 && p.HostPort != p.ContainerPort {
			t.Errorf("port %s: hostPort %d must equal containerPort %d with hostNetwork", p.Name, p.HostPort, p.ContainerPort)
		}
	}

	// Resources.
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Error("node-agent: cpu and memory requests required")
	}
	if lim := c.Resources.Limits.Memory(); !lim.IsZero() && lim.Cmp(*c.Resources.Requests.Memory()) < 0 {
		t.Error("node-agent: memory limit below request")
	}

	// Volumes and mounts.
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		if _, ok := vols[m.Name]; !ok {
			t.Errorf("mount %s has no volume", m.Name)
		}
		mounts[m.MountPath] = m
	}
	hostPathOf := func(name string) string {
		v, ok := vols[name]
		if !ok || v.HostPath == nil {
			return ""
		}
		return v.HostPath.Path
	}
	bpf, ok := mounts["/sys/fs/bpf"]
	if !ok || hostPathOf(bpf.Name) != "/sys/fs/bpf" {
		t.Error("node-agent: host /sys/fs/bpf must be mounted at /sys/fs/bpf")
	} else if bpf.MountPropagation == nil || *bpf.MountPropagation != corev1.MountPropagationHostToContainer {
		t.Error("node-agent: /sys/fs/bpf needs HostToContainer propagation (sees the bpffs mounted by the init container)")
	}
	var cgMount *corev1.VolumeMount
	for p, m := range mounts {
		if hostPathOf(m.Name) == "/sys/fs/cgroup" {
			cgMount = &m
			_ = p
		}
	}
	if cgMount == nil {
		t.Fatal("node-agent: host /sys/fs/cgroup not mounted")
	}

	// The bpffs mount is made by a privileged init container with Bidirectional propagation (the only
	// way Kubernetes allows Bidirectional).
	var bidi bool
	for _, ic := range spec.InitContainers {
		for _, m := range ic.VolumeMounts {
			if hostPathOf(m.Name) == "/sys/fs/bpf" && m.MountPropagation != nil &&
				*m.MountPropagation == corev1.MountPropagationBidirectional {
				if ic.SecurityContext == nil || ic.SecurityContext.Privileged == nil || !*ic.SecurityContext.Privileged {
					t.Errorf("init container %s: Bidirectional propagation requires privileged", ic.Name)
				}
				bidi = true
			}
		}
	}
	if !bidi {
		t.Error("no init container mounts /sys/fs/bpf with Bidirectional propagation")
	}
	// No other container may use Bidirectional without privilege.
	for _, cc := range spec.Containers {
		for _, m := range cc.VolumeMounts {
			if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional &&
				(cc.SecurityContext == nil || cc.SecurityContext.Privileged == nil || !*cc.SecurityContext.Privileged) {
				t.Errorf("container %s: Bidirectional mount %s without privileged", cc.Name, m.MountPath)
			}
		}
	}

	// The config file the command names comes from the ConfigMap, and its paths point into the mounts.
	var cfgPath string
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			cfgPath = v
		}
	}
	if cfgPath == "" {
		t.Fatal("node-agent command has no --config=FILE")
	}
	cfgMount, ok := mounts[filepath.Dir(cfgPath)]
	if !ok || vols[cfgMount.Name].ConfigMap == nil || vols[cfgMount.Name].ConfigMap.Name != cm.Name {
		t.Fatalf("--config %s is not in a mount of ConfigMap %s", cfgPath, cm.Name)
	}
	key := filepath.Base(cfgPath)
	if items := vols[cfgMount.Name].ConfigMap.Items; len(items) > 0 {
		key = ""
		for _, it := range items {
			if it.Path == filepath.Base(cfgPath) {
				key = it.Key
			}
		}
	}
	raw, ok := cm.Data[key]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %q for %s", cm.Name, key, cfgPath)
	}
	cfg, err := config.Parse([]byte(raw))
	if err != nil {
		t.Fatalf("ConfigMap %s/%s does not parse as agent config: %v", cm.Name, key, err)
	}
	if _, err := cfg.Resources(); err != nil {
		t.Fatalf("ConfigMap static_resources: %v", err)
	}
	if !strings.HasPrefix(cfg.Capture.Cgroup, cgMount.MountPath+"/") {
		t.Errorf("capture.cgroup %q is not under the host cgroup mount %s", cfg.Capture.Cgroup, cgMount.MountPath)
	}
	if !strings.HasPrefix(cfg.Capture.BPFFS, "/sys/fs/bpf/") || strings.Contains(filepath.Base(cfg.Capture.BPFFS), ".") {
		t.Errorf("capture.bpffs %q: want a folder under /sys/fs/bpf without dots", cfg.Capture.BPFFS)
	}
	if cfg.Proxy.Listen != "127.0.0.1:15001" || cfg.Admin.Listen != "127.0.0.1:15000" {
		t.Errorf("listen addresses proxy=%s admin=%s", cfg.Proxy.Listen, cfg.Admin.Listen)
	}
}

// TestStrictDecodeRejects proves the decoder used above is strict: a test that could not fail would
// prove nothing about the manifests.
func TestStrictDecodeRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":  "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\nautomountToken: false\n",
		"misspelled":     "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: a}\nspec: {template: {spec: {hostNetwrk: true}}}\n",
		"duplicate key":  "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\nmetadata: {name: b}\n",
		"unknown kind":   "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n",
		"wrong type":     "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: [1, 2]\n",
		"not yaml":       "apiVersion: v1\nkind: [\n",
		"no kind at all": "metadata: {name: a}\n",
	} {
		if _, _, err := decodeStrict([]byte(doc)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	if _, _, err := decodeStrict([]byte("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n")); err != nil {
		t.Errorf("valid document rejected: %v", err)
	}
}

func TestSplitDocuments(t *testing.T) {
	docs := splitDocuments([]byte("# header\n---\na: 1\n---\n# only a comment\n---\nb: 2\n...\n"))
	if len(docs) != 2 {
		t.Fatalf("got %d documents, want 2: %q", len(docs), docs)
	}
}

func FuzzDecodeStrict(f *testing.F) {
	for _, name := range []string{"00-namespace.yaml", "10-serviceaccount.yaml", "20-configmap.yaml", "30-daemonset.yaml"} {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n---\nkind: x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, doc := range splitDocuments(data) {
			kind, obj, err := decodeStrict(doc)
			if err != nil {
				continue
			}
			if kind == "" || obj == nil {
				t.Fatalf("decoded without kind or object: %q", doc)
			}
			// A strictly decoded object re-encodes and decodes strictly again.
			js, err := json.Marshal(obj)
			if err != nil {
				t.Fatalf("re-encode %s: %v", kind, err)
			}
			var tm typeMeta
			_ = json.Unmarshal(js, &tm)
			if tm.Kind != "" && tm.Kind != kind {
				t.Fatalf("kind changed %s -> %s", kind, tm.Kind)
			}
		}
	})
}
