package node

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/kvstore/kvstore/membership"
	"github.com/kvstore/kvstore/storage"
)

// ConfigError is a Config field whose value Start refuses. Start checks
// the whole Config before it touches the disk or the network.
type ConfigError struct {
	// Field is the Config field, dotted for nested ones (Limits.MaxKeyBytes).
	Field string
	// Value is the refused value as written in the message.
	Value string
	// Reason says what the field wants.
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("node: %s %s: %s", e.Field, e.Value, e.Reason)
}

// MinRaftTimeout is the smallest raft timeout: raft's leader lease, half
// of it, must be at least 5ms.
const MinRaftTimeout = 10 * time.Millisecond

// Validate checks the Config as Start would, without side effects.
func (c Config) Validate() error {
	bad := func(field, value, reason string) error {
		return &ConfigError{Field: field, Value: value, Reason: reason}
	}
	if c.DataDir == "" {
		return bad("DataDir", `""`, "a data directory is required")
	}
	if c.Listen != "" {
		if err := checkHostPort(c.Listen, true); err != nil {
			return bad("Listen", strconv.Quote(c.Listen), err.Error())
		}
	}
	if c.Advertise != "" {
		if err := checkHostPort(c.Advertise, false); err != nil {
			return bad("Advertise", strconv.Quote(c.Advertise), err.Error())
		}
		host, _, _ := net.SplitHostPort(c.Advertise)
		if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
			return bad("Advertise", strconv.Quote(c.Advertise), "other nodes cannot dial a wildcard address; name this host's address")
		}
	}
	if c.Name != "" && strings.ContainsAny(c.Name, " \t\r\n/") {
		return bad("Name", strconv.Quote(c.Name), "a node id has no spaces or slashes")
	}
	for _, seed := range c.Join {
		if err := checkSeed(seed); err != nil {
			return bad("Join", strconv.Quote(seed), err.Error())
		}
	}
	ints := []struct {
		field string
		v     int64
	}{
		{"BootstrapExpect", int64(c.BootstrapExpect)},
		{"MaxVoters", int64(c.MaxVoters)},
		{"Limits.MaxKeyBytes", int64(c.Limits.MaxKeyBytes)},
		{"Limits.MaxValueBytes", int64(c.Limits.MaxValueBytes)},
		{"Limits.MaxRequestBytes", int64(c.Limits.MaxRequestBytes)},
		{"Limits.MaxRangePairs", c.Limits.MaxRangePairs},
		{"Limits.MaxTxnOps", int64(c.Limits.MaxTxnOps)},
	}
	for _, f := range ints {
		if f.v < 0 {
			return bad(f.field, strconv.FormatInt(f.v, 10), "must not be negative (0 takes the default)")
		}
	}
	if c.Limits.MaxKeyBytes > storage.MaxKeyBytes {
		return bad("Limits.MaxKeyBytes", strconv.Itoa(c.Limits.MaxKeyBytes), fmt.Sprintf("the store holds keys of at most %d bytes", storage.MaxKeyBytes))
	}
	durations := []struct {
		field string
		v     time.Duration
	}{
		{"RequestTimeout", c.RequestTimeout},
		{"DeadAfter", c.DeadAfter},
		{"SnapshotInterval", c.SnapshotInterval},
		{"ReconcileInterval", c.ReconcileInterval},
		{"BodyReadTimeout", c.BodyReadTimeout},
	}
	for _, f := range durations {
		if f.v < 0 {
			return bad(f.field, f.v.String(), "must not be negative (0 takes the default)")
		}
	}
	for _, f := range []struct {
		field string
		v     time.Duration
	}{{"HeartbeatTimeout", c.HeartbeatTimeout}, {"ElectionTimeout", c.ElectionTimeout}} {
		if f.v != 0 && f.v < MinRaftTimeout {
			return bad(f.field, f.v.String(), fmt.Sprintf("must be at least %v (0 takes the default)", MinRaftTimeout))
		}
	}
	if err := c.TLS.Validate(); err != nil {
		return bad("TLS", "", err.Error())
	}
	if c.TLS.Enabled() && len(c.GossipKey) == 0 {
		return bad("GossipKey", "(none)", "TLS is on, and gossip packets travel over UDP outside TLS: give a gossip key to encrypt them")
	}
	if c.AllowPlaintextClients && !c.TLS.Enabled() {
		return bad("AllowPlaintextClients", "true", "means something only with TLS on")
	}
	if len(c.GossipKey) > 0 {
		if err := membership.ValidateKey(c.GossipKey); err != nil {
			return bad("GossipKey", fmt.Sprintf("(%d bytes)", len(c.GossipKey)), err.Error())
		}
	}
	return nil
}

// checkHostPort checks "host:port" with a numeric port; port 0 only when
// zeroPort.
func checkHostPort(addr string, zeroPort bool) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port, such as 127.0.0.1:7379")
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	if p == 0 && !zeroPort {
		return fmt.Errorf("want a port other than 0")
	}
	return nil
}

// checkSeed checks a seed: host:port, or a host alone (this node's port).
func checkSeed(seed string) error {
	host, port, err := net.SplitHostPort(seed)
	if err != nil {
		host, port = strings.Trim(seed, "[]"), ""
	}
	if host == "" {
		return fmt.Errorf("no host")
	}
	if port != "" {
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return fmt.Errorf("port %q is not a number from 1 to 65535", port)
		}
	}
	return nil
}
