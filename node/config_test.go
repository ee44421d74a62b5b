package node

import (
	"errors"
	"testing"

	"github.com/kvstore/kvstore/storage"
)

// TestConfigRefusesKeysTooLongForTheStore: --max-key-bytes cannot let
// through keys the store cannot hold; every node would refuse them when
// applying.
func TestConfigRefusesKeysTooLongForTheStore(t *testing.T) {
	c := Config{DataDir: t.TempDir()}
	c.Limits.MaxKeyBytes = storage.MaxKeyBytes
	if err := c.Validate(); err != nil {
		t.Fatalf("the longest key the store holds: %v", err)
	}
	c.Limits.MaxKeyBytes = storage.MaxKeyBytes + 1
	var ce *ConfigError
	if err := c.Validate(); !errors.As(err, &ce) || ce.Field != "Limits.MaxKeyBytes" {
		t.Fatalf("MaxKeyBytes %d: %v, want a ConfigError on Limits.MaxKeyBytes", c.Limits.MaxKeyBytes, err)
	}
}
