package xds

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
)

// Defaults applied by NewClient to zero Config fields.
const (
	DefaultMaxRecvMsgSize = 64 << 20
	DefaultBackoffBase    = 500 * time.Millisecond
	DefaultBackoffMax     = 30 * time.Second
	DefaultWarmTimeout    = 15 * time.Second
	DefaultWantTimeout    = 10 * time.Second
	// UserAgentName is sent in Node.user_agent_name.
	UserAgentName = "meshlet"
)

// Config configures a Client.
type Config struct {
	// Address of the control plane: "host:port", "unix:///abs/path" or any
	// gRPC target string.
	Address string
	// Node identifies the agent to the control plane. Build it with
	// IstioIdentity.Node or NewNode.
	Node *corev3.Node
	// Delta selects the incremental ADS variant (DeltaAggregatedResources)
	// instead of state-of-the-world.
	Delta bool
	// OnDemand (delta only) starts with no cluster and listener
	// subscriptions: resources are subscribed by name through Client.Want.
	OnDemand bool
	// TLS, when set, secures the connection; nil means plaintext.
	TLS *TLSConfig
	// TokenFile, when set, is read on every stream and sent as a per-RPC
	// "authorization: Bearer <token>" header (Istio: the projected service
	// account token with audience istio-ca).
	TokenFile string
	// ClusterID, when set, is sent as the gRPC header "clusterid" (istiod
	// uses it to pick the Kubernetes cluster that validates the token).
	ClusterID string
	// MaxRecvMsgSize bounds one response message (default 64 MiB). Larger
	// responses fail the stream with an error that says so.
	MaxRecvMsgSize int
	// BackoffBase and BackoffMax bound the jittered exponential reconnect
	// delay (defaults 500ms and 30s).
	BackoffBase, BackoffMax time.Duration
	// WarmTimeout bounds how long the client waits for subscribed
	// resources (e.g. the endpoints of a new cluster) before it applies a
	// Set without them (default 15s).
	WarmTimeout time.Duration
	// Persister, when set, stores every applied Set and provides the Set
	// to serve at start while the control plane is unreachable.
	Persister Persister
	// Logger (default: no-op).
	Logger *zap.Logger
	// DialOptions are appended to the client's own (tests, custom dialers).
	DialOptions []grpc.DialOption
}

// TLSConfig secures the connection to the control plane.
type TLSConfig struct {
	// CAFile is a PEM bundle of roots that verify the server (Istio:
	// /var/run/secrets/istio/root-cert.pem). Empty: system roots.
	CAFile string
	// ServerName overrides the name verified in the server certificate
	// (Istio: istiod.istio-system.svc).
	ServerName string
	// CertFile and KeyFile, when both set, present a client certificate.
	CertFile, KeyFile string
}

func (c *Config) setDefaults() error {
	if c.Address == "" {
		return errors.New("xds config: empty control plane address")
	}
	if c.Node == nil || c.Node.GetId() == "" {
		return errors.New("xds config: node with a non-empty id is required")
	}
	if c.OnDemand && !c.Delta {
		return errors.New("xds config: on-demand subscriptions need the delta protocol")
	}
	if c.MaxRecvMsgSize <= 0 {
		c.MaxRecvMsgSize = DefaultMaxRecvMsgSize
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.BackoffMax < c.BackoffBase {
		c.BackoffMax = c.BackoffBase
	}
	if c.WarmTimeout <= 0 {
		c.WarmTimeout = DefaultWarmTimeout
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return nil
}

// NewNode returns a Node with the given id, cluster and string metadata.
func NewNode(id, cluster string, metadata map[string]string) *corev3.Node {
	n := &corev3.Node{Id: id, Cluster: cluster, UserAgentName: UserAgentName}
	if len(metadata) > 0 {
		fields := make(map[string]*structpb.Value, len(metadata))
		for k, v := range metadata {
			fields[k] = structpb.NewStringValue(v)
		}
		n.Metadata = &structpb.Struct{Fields: fields}
	}
	return n
}

// IstioIdentity is how a node agent presents itself to istiod: as a sidecar
// of its own pod (see docs/xds.md). istiod then computes the outbound view
// of the agent's namespace (its SidecarScope).
type IstioIdentity struct {
	PodIP     string // required; node id part 2 and INSTANCE_IPS
	PodName   string // required
	Namespace string // required; NAMESPACE
	// ClusterID is the Istio cluster name (default "Kubernetes").
	ClusterID      string
	ServiceAccount string
	MeshID         string // default "cluster.local"
	NodeName       string
	Network        string
	// IstioVersion should be the istiod version the agent was tested with;
	// without it istiod generates config for the newest proxy.
	IstioVersion string
	// InterceptionMode: REDIRECT (default), TPROXY or NONE.
	InterceptionMode string
	// DNSDomain defaults to "<Namespace>.svc.cluster.local".
	DNSDomain string
	Labels    map[string]string
	// Extra metadata entries (string values), e.g. DNS_CAPTURE.
	Extra map[string]string
}

// Node builds the sidecar node: id "sidecar~IP~pod.ns~ns.svc.cluster.local"
// and the metadata istiod reads.
func (id IstioIdentity) Node() (*corev3.Node, error) {
	if net.ParseIP(id.PodIP) == nil {
		return nil, fmt.Errorf("istio identity: pod IP %q is not an IP address", id.PodIP)
	}
	if id.PodName == "" || id.Namespace == "" {
		return nil, errors.New("istio identity: pod name and namespace are required")
	}
	for _, s := range []string{id.PodName, id.Namespace, id.DNSDomain} {
		if strings.Contains(s, "~") {
			return nil, fmt.Errorf("istio identity: %q contains '~'", s)
		}
	}
	domain := id.DNSDomain
	if domain == "" {
		domain = id.Namespace + ".svc.cluster.local"
	}
	clusterID := or(id.ClusterID, "Kubernetes")
	mode := strings.ToUpper(or(id.InterceptionMode, "REDIRECT"))
	switch mode {
	case "REDIRECT", "TPROXY", "NONE":
	default:
		return nil, fmt.Errorf("istio identity: interception mode %q is not REDIRECT, TPROXY or NONE", id.InterceptionMode)
	}
	md := map[string]*structpb.Value{}
	set := func(k, v string) {
		if v != "" {
			md[k] = structpb.NewStringValue(v)
		}
	}
	for k, v := range id.Extra {
		set(k, v)
	}
	set("NAMESPACE", id.Namespace)
	set("CLUSTER_ID", clusterID)
	set("INSTANCE_IPS", id.PodIP)
	set("SERVICE_ACCOUNT", id.ServiceAccount)
	set("MESH_ID", or(id.MeshID, "cluster.local"))
	set("NODE_NAME", id.NodeName)
	set("NETWORK", id.Network)
	set("ISTIO_VERSION", id.IstioVersion)
	set("INTERCEPTION_MODE", mode)
	set("POD_NAME", id.PodName)
	if len(id.Labels) > 0 {
		keys := make([]string, 0, len(id.Labels))
		for k := range id.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		lf := map[string]*structpb.Value{}
		for _, k := range keys {
			lf[k] = structpb.NewStringValue(id.Labels[k])
		}
		md["LABELS"] = structpb.NewStructValue(&structpb.Struct{Fields: lf})
	}
	return &corev3.Node{
		Id:            strings.Join([]string{"sidecar", id.PodIP, id.PodName + "." + id.Namespace, domain}, "~"),
		Cluster:       clusterID,
		Metadata:      &structpb.Struct{Fields: md},
		UserAgentName: UserAgentName,
	}, nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
