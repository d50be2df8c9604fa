package config

import _ "embed"

//go:embed default.yaml
var defaultYAML []byte

// Default returns the embedded default configuration.
func Default() *Config {
	c, err := Parse(defaultYAML)
	if err != nil {
		panic("embedded default config is invalid: " + err.Error())
	}
	return c
}

// DefaultYAML returns the embedded default configuration's text.
func DefaultYAML() []byte { return append([]byte(nil), defaultYAML...) }
