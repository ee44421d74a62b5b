package membership

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
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

// Keyring rotation. memberlist decrypts with every key of its keyring and
// encrypts with the primary one, so a cluster changes keys without a gap:
// every node installs the new key, then every node uses it, then every node
// removes the old one.

// ErrNotEncrypted is the error of a keyring change on a node whose gossip
// is not encrypted: encryption cannot be turned on while running.
var ErrNotEncrypted = errors.New("gossip is not encrypted on this node (started without a gossip key): its keyring cannot change")

// Keys returns the primary key and every key of the keyring (the primary
// first); nil when gossip is not encrypted.
func (g *Gossip) Keys() (primary []byte, all [][]byte) {
	if g.keyring == nil {
		return nil, nil
	}
	primary = g.keyring.GetPrimaryKey()
	all = [][]byte{primary}
	for _, k := range g.keyring.GetKeys() {
		if !bytes.Equal(k, primary) {
			all = append(all, k)
		}
	}
	return primary, all
}

// InstallKey adds key to the keyring: gossip encrypted with it is read.
func (g *Gossip) InstallKey(key []byte) error {
	if g.keyring == nil {
		return ErrNotEncrypted
	}
	if err := ValidateKey(key); err != nil {
		return err
	}
	return g.keyring.AddKey(slices.Clone(key))
}

// UseKey makes an installed key the primary one: gossip is encrypted with
// it from now on.
func (g *Gossip) UseKey(key []byte) error {
	if g.keyring == nil {
		return ErrNotEncrypted
	}
	if !g.hasKey(key) {
		return errors.New("the key is not installed: install it first, on every node")
	}
	return g.keyring.UseKey(key)
}

// RemoveKey removes a key other than the primary one from the keyring; a
// key not in it is already removed.
func (g *Gossip) RemoveKey(key []byte) error {
	if g.keyring == nil {
		return ErrNotEncrypted
	}
	if bytes.Equal(key, g.keyring.GetPrimaryKey()) {
		return errors.New("the key is the primary one: use another first")
	}
	return g.keyring.RemoveKey(key) // a key not installed: nothing to do
}

func (g *Gossip) hasKey(key []byte) bool {
	return slices.ContainsFunc(g.keyring.GetKeys(), func(k []byte) bool { return bytes.Equal(k, key) })
}

// KeyFingerprint names a key without revealing it: "sha256:" and the first
// 8 bytes of its SHA-256 in hex.
func KeyFingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return "sha256:" + hex.EncodeToString(sum[:8])
}

func cloneKeys(keys [][]byte) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = slices.Clone(k)
	}
	return out
}
