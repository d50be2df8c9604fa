package server_test

import listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

type listenerT = listenerv3.Listener
