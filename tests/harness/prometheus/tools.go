//go:build tools

// The command built from this module; the import keeps it in go.mod and go.sum.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
