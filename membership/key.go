package membership

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// ParseKey decodes a gossip encryption key given as base64 (standard
// alphabet, padding optional) of 16, 24 or 32 bytes, selecting AES-128,
// AES-192 or AES-256. `openssl rand -base64 32` makes one. Errors never
// echo the key, since it is a secret that may end up in logs.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("gossip key is empty: want base64 of 16, 24 or 32 bytes (e.g. `openssl rand -base64 32`)")
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		// Accept unpadded keys too: some tools strip the '='.
		var rawErr error
		if key, rawErr = base64.RawStdEncoding.DecodeString(s); rawErr != nil {
			return nil, fmt.Errorf("gossip key is not valid base64: %w", err)
		}
	}
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	return key, nil
}

// ValidateKey checks a gossip key's length.
func ValidateKey(key []byte) error {
	switch len(key) {
	case 16, 24, 32:
		return nil
	default:
		return fmt.Errorf("gossip key is %d bytes: want 16, 24 or 32 (AES-128, -192 or -256)", len(key))
	}
}
