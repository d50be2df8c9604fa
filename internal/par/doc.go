// Package par runs independent work items on the available CPUs: the
// translation of a large xDS state and the decoding of a large xDS response
// are made of resources that do not depend on each other.
package par
