package server

import (
	"context"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"go.uber.org/zap"
)

// nackLogger logs stream events and NACKs and forwards to the user's
// callbacks.
type nackLogger struct {
	serverv3.Callbacks // may be nil
	log                *zap.Logger
}

func (n *nackLogger) OnStreamOpen(ctx context.Context, id int64, typeURL string) error {
	n.log.Debug("stream open", zap.Int64("stream", id))
	if n.Callbacks != nil {
		return n.Callbacks.OnStreamOpen(ctx, id, typeURL)
	}
	return nil
}

func (n *nackLogger) OnStreamClosed(id int64, node *corev3.Node) {
	n.log.Debug("stream closed", zap.Int64("stream", id), zap.String("node", node.GetId()))
	if n.Callbacks != nil {
		n.Callbacks.OnStreamClosed(id, node)
	}
}

func (n *nackLogger) OnDeltaStreamOpen(ctx context.Context, id int64, typeURL string) error {
	n.log.Debug("delta stream open", zap.Int64("stream", id))
	if n.Callbacks != nil {
		return n.Callbacks.OnDeltaStreamOpen(ctx, id, typeURL)
	}
	return nil
}

func (n *nackLogger) OnDeltaStreamClosed(id int64, node *corev3.Node) {
	n.log.Debug("delta stream closed", zap.Int64("stream", id), zap.String("node", node.GetId()))
	if n.Callbacks != nil {
		n.Callbacks.OnDeltaStreamClosed(id, node)
	}
}

func (n *nackLogger) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	if ed := req.GetErrorDetail(); ed != nil {
		n.log.Warn("NACK", zap.Int64("stream", id), zap.String("node", req.GetNode().GetId()),
			zap.String("type", req.GetTypeUrl()), zap.String("nonce", req.GetResponseNonce()), zap.String("error", ed.GetMessage()))
	}
	if n.Callbacks != nil {
		return n.Callbacks.OnStreamRequest(id, req)
	}
	return nil
}

func (n *nackLogger) OnStreamResponse(ctx context.Context, id int64, req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	if n.Callbacks != nil {
		n.Callbacks.OnStreamResponse(ctx, id, req, resp)
	}
}

func (n *nackLogger) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	if ed := req.GetErrorDetail(); ed != nil {
		n.log.Warn("NACK", zap.Int64("stream", id), zap.String("node", req.GetNode().GetId()),
			zap.String("type", req.GetTypeUrl()), zap.String("nonce", req.GetResponseNonce()), zap.String("error", ed.GetMessage()))
	}
	if n.Callbacks != nil {
		return n.Callbacks.OnStreamDeltaRequest(id, req)
	}
	return nil
}

func (n *nackLogger) OnStreamDeltaResponse(id int64, req *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	if n.Callbacks != nil {
		n.Callbacks.OnStreamDeltaResponse(id, req, resp)
	}
}

func (n *nackLogger) OnFetchRequest(ctx context.Context, req *discoveryv3.DiscoveryRequest) error {
	if n.Callbacks != nil {
		return n.Callbacks.OnFetchRequest(ctx, req)
	}
	return nil
}

func (n *nackLogger) OnFetchResponse(req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	if n.Callbacks != nil {
		n.Callbacks.OnFetchResponse(req, resp)
	}
}

func sortStrings(s []string) { sort.Strings(s) }
