// Package daemonset holds the Kubernetes manifests that run meshlet's node agent as a DaemonSet (the
// *.yaml files beside this file) and an offline test that strict-decodes every manifest into the
// k8s.io/api types and checks the invariants the agent depends on. It has no non-test code.
package daemonset
