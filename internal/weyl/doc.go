// Package weyl spreads picks over weighted choices with a golden-ratio Weyl
// sequence: deterministic, more even than random draws over any window,
// and still interleaved.
package weyl
