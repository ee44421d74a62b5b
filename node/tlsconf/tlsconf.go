package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Protocol names negotiated with ALPN on the node's port.
const (
	// ALPNRaft carries a raft stream (after the PeerHello handshake).
	ALPNRaft = "kvstore-raft/1"
	// ALPNGroupRaft carries a data group's raft stream (after the
	// PeerHello handshake and the group header). The meta group keeps
	// ALPNRaft, which nodes that know no data groups speak.
	ALPNGroupRaft = "kvstore-raft-group/1"
	// ALPNGossip carries a memberlist stream.
	ALPNGossip = "kvstore-gossip/1"
	// ALPNForward carries writes a follower forwards to the leader.
	ALPNForward = "kvstore-forward/1"
	// ALPNPeer carries a node's RPCs to another (HTTP/2 with prior
	// knowledge inside TLS): the peer services, and the API calls one
	// node makes on another.
	ALPNPeer = "kvstore-peer/1"
	// ALPNH2 and ALPNHTTP1 are the API's.
	ALPNH2    = "h2"
	ALPNHTTP1 = "http/1.1"
)

// PeerProtocols are the protocol names only peers may negotiate.
var PeerProtocols = []string{ALPNRaft, ALPNGroupRaft, ALPNGossip, ALPNForward, ALPNPeer}

// clientProtocols are the protocol names a client may negotiate.
var clientProtocols = []string{ALPNH2, ALPNHTTP1}

// IsPeerProtocol says whether p is one of PeerProtocols.
func IsPeerProtocol(p string) bool { return slices.Contains(PeerProtocols, p) }

// IsPeer says whether a connection in state cs was a peer's: it negotiated
// a peer protocol, which the port only does after verifying a node
// certificate against the peer CA.
func IsPeer(cs *tls.ConnectionState) bool {
	return cs != nil && cs.HandshakeComplete && IsPeerProtocol(cs.NegotiatedProtocol) && len(cs.VerifiedChains) > 0
}

// Config names the files and choices of a node's TLS. TLS is on when
// CertFile or AutoTLS is set.
type Config struct {
	// CertFile and KeyFile are the certificate (with its chain) and key the
	// node shows clients, in PEM.
	CertFile, KeyFile string
	// TrustedCAFile holds the CA certificates client certificates are
	// verified against, in PEM. Empty: client certificates are neither
	// asked for nor checked.
	TrustedCAFile string
	// ClientCertAuth requires every client to present a certificate from
	// TrustedCAFile.
	ClientCertAuth bool
	// PeerCertFile, PeerKeyFile and PeerTrustedCAFile are the node's
	// certificate for other nodes (used both to serve and to dial: it must
	// allow server and client authentication) and the CA that signs the
	// others'. Empty: CertFile, KeyFile and TrustedCAFile.
	PeerCertFile, PeerKeyFile, PeerTrustedCAFile string
	// MinVersion is the lowest TLS version spoken (tls.VersionTLS12 or
	// tls.VersionTLS13); 0 takes tls.VersionTLS12.
	MinVersion uint16
	// AutoTLS makes a self-signed certificate at start when CertFile is
	// empty; for trying TLS out only.
	AutoTLS bool
	// AutoTLSHosts are the names and addresses AutoTLS's certificate is
	// for, besides localhost and 127.0.0.1.
	AutoTLSHosts []string
}

// Enabled says whether c turns TLS on.
func (c Config) Enabled() bool { return c.CertFile != "" || c.AutoTLS }

// peerFiles are the peer files with their defaults.
func (c Config) peerFiles() (cert, key, ca string) {
	if c.PeerCertFile == "" && c.PeerKeyFile == "" {
		cert, key = c.CertFile, c.KeyFile
	} else {
		cert, key = c.PeerCertFile, c.PeerKeyFile
	}
	ca = c.PeerTrustedCAFile
	if ca == "" {
		ca = c.TrustedCAFile
	}
	return cert, key, ca
}

// Validate checks the combination of fields, without reading files.
func (c Config) Validate() error {
	if !c.Enabled() {
		if c.KeyFile != "" || c.TrustedCAFile != "" || c.ClientCertAuth || c.PeerCertFile != "" || c.PeerKeyFile != "" || c.PeerTrustedCAFile != "" {
			return errors.New("TLS settings given without a certificate: set the cert and key files (or auto TLS)")
		}
		return nil
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("the cert file and the key file go together: give both")
	}
	if (c.PeerCertFile == "") != (c.PeerKeyFile == "") {
		return errors.New("the peer cert file and the peer key file go together: give both")
	}
	if c.ClientCertAuth && c.TrustedCAFile == "" {
		return errors.New("client cert auth needs the trusted CA file that signs client certificates")
	}
	if _, _, ca := c.peerFiles(); ca == "" && !c.AutoTLS {
		return errors.New("peers need a CA to verify each other: set the peer trusted CA file (or the trusted CA file)")
	}
	switch c.MinVersion {
	case 0, tls.VersionTLS12, tls.VersionTLS13:
	default:
		return fmt.Errorf("min version 0x%04x: want TLS 1.2 or 1.3", c.MinVersion)
	}
	return nil
}

// ParseVersion reads a TLS version as flags spell it: "1.2", "1.3" (or
// "TLS1.2", "TLS1.3").
func ParseVersion(s string) (uint16, error) {
	switch strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(s)), "TLS") {
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("TLS version %q: want 1.2 or 1.3", s)
}

// TLS is a node's loaded TLS: the configurations its port serves with and
// dials other nodes with. It is safe for concurrent use.
type TLS struct {
	min            uint16
	clientCertAuth bool
	client         *source
	peer           *source
}

// New loads cfg's files (or makes AutoTLS's certificate), failing on any
// that does not load. Later changes to the files are picked up at the next
// handshake.
func New(cfg Config, logger *slog.Logger) (*TLS, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.Enabled() {
		return nil, errors.New("tlsconf: TLS is not configured")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	t := &TLS{min: max(cfg.MinVersion, tls.VersionTLS12), clientCertAuth: cfg.ClientCertAuth}
	var auto *tls.Certificate
	if cfg.CertFile == "" {
		c, err := selfSigned(cfg.AutoTLSHosts)
		if err != nil {
			return nil, fmt.Errorf("tlsconf: auto TLS: %w", err)
		}
		auto = c
		logger.Warn("auto TLS: serving with a self-signed certificate made at start; this is unsafe for production: clients cannot verify this node (they need --insecure-skip-tls-verify), and it trusts no other node as a peer unless peer files are given")
	}
	if cfg.CertFile != "" {
		t.client = &source{what: "client", certFile: cfg.CertFile, keyFile: cfg.KeyFile, caFile: cfg.TrustedCAFile, logger: logger}
	} else {
		t.client = staticSource(auto, "")
		if cfg.TrustedCAFile != "" {
			pool, err := readPool(cfg.TrustedCAFile)
			if err != nil {
				return nil, fmt.Errorf("tlsconf: client CA: %w", err)
			}
			t.client.pool = pool
		}
	}
	pc, pk, pca := cfg.peerFiles()
	switch {
	case pc != "":
		t.peer = &source{what: "peer", certFile: pc, keyFile: pk, caFile: pca, logger: logger}
		if pca == "" {
			// AutoTLS with peer files but no CA: trust nothing but
			// the peer certificate itself.
			t.peer.selfTrust = true
		}
	default:
		t.peer = staticSource(auto, "self")
	}
	for _, s := range []*source{t.client, t.peer} {
		if _, _, err := s.load(); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// ServerConfig is the configuration the node's port serves TLS with: it
// picks the peer or the client configuration by the ClientHello's ALPN
// offer (see the package doc).
func (t *TLS) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: t.min,
		NextProtos: clientProtocols,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if slices.ContainsFunc(hello.SupportedProtos, IsPeerProtocol) {
				return t.peerServer()
			}
			return t.clientServer()
		},
	}
}

func (t *TLS) peerServer() (*tls.Config, error) {
	cert, pool, err := t.peer.load()
	if err != nil {
		return nil, err
	}
	if pool == nil {
		// A nil ClientCAs would mean the system's roots.
		return nil, errors.New("tlsconf: no peer CA")
	}
	return &tls.Config{
		MinVersion:             t.min,
		Certificates:           []tls.Certificate{*cert},
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              pool,
		NextProtos:             PeerProtocols,
		SessionTicketsDisabled: true,
		VerifyConnection:       requireNodeCert,
	}, nil
}

func (t *TLS) clientServer() (*tls.Config, error) {
	cert, pool, err := t.client.load()
	if err != nil {
		return nil, err
	}
	c := &tls.Config{
		MinVersion:   t.min,
		Certificates: []tls.Certificate{*cert},
		NextProtos:   clientProtocols,
	}
	switch {
	case t.clientCertAuth && pool == nil:
		// A nil ClientCAs would mean the system's roots.
		return nil, errors.New("tlsconf: client cert auth without a client CA")
	case t.clientCertAuth:
		c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, pool
	case pool != nil:
		c.ClientAuth, c.ClientCAs = tls.VerifyClientCertIfGiven, pool
	}
	return c, nil
}

// requireNodeCert refuses a verified peer certificate that is not a node
// certificate (one allowed to authenticate a server too).
func requireNodeCert(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tlsconf: a peer connection needs a node certificate")
	}
	leaf := cs.PeerCertificates[0]
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return fmt.Errorf("tlsconf: certificate %q is not a node certificate (it does not allow server authentication): peers need one from the peer CA", leaf.Subject.CommonName)
	}
	return nil
}

// PeerDialConfig is the configuration to dial the node at addr (host:port)
// for protocol alpn, one of PeerProtocols: it shows this node's peer
// certificate and verifies the other's against the peer CA and addr's
// host.
func (t *TLS) PeerDialConfig(alpn, addr string) (*tls.Config, error) {
	cert, pool, err := t.peer.load()
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return &tls.Config{
		MinVersion:             t.min,
		Certificates:           []tls.Certificate{*cert},
		RootCAs:                pool,
		ServerName:             host,
		NextProtos:             []string{alpn},
		SessionTicketsDisabled: true,
	}, nil
}

// DialPeer runs the TLS handshake of a connection to the node at addr for
// protocol alpn on raw, and checks that the node chose alpn. It closes raw
// on failure.
func (t *TLS) DialPeer(ctx context.Context, raw net.Conn, alpn, addr string) (*tls.Conn, error) {
	cfg, err := t.PeerDialConfig(alpn, addr)
	if err != nil {
		raw.Close()
		return nil, err
	}
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	if got := c.ConnectionState().NegotiatedProtocol; got != alpn {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s: it chose protocol %q, not %q", addr, got, alpn)
	}
	return c, nil
}

// source is a certificate, its key and a CA bundle, read again from their
// files when these change.
type source struct {
	what                      string
	certFile, keyFile, caFile string
	// selfTrust trusts the certificate itself as the CA (AutoTLS).
	selfTrust bool
	logger    *slog.Logger

	mu     sync.Mutex
	stamps []stamp
	cert   *tls.Certificate
	pool   *x509.CertPool
}

type stamp struct {
	mod  time.Time
	size int64
}

func staticSource(cert *tls.Certificate, trust string) *source {
	s := &source{what: "auto", cert: cert, stamps: []stamp{}}
	if trust == "self" {
		s.pool = x509.NewCertPool()
		s.pool.AddCert(cert.Leaf)
	}
	return s
}

func (s *source) files() []string {
	fs := []string{s.certFile, s.keyFile}
	if s.caFile != "" {
		fs = append(fs, s.caFile)
	}
	return fs
}

// load returns the current certificate and pool, reading the files again
// when they changed.
func (s *source) load() (*tls.Certificate, *x509.CertPool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.certFile == "" {
		return s.cert, s.pool, nil
	}
	files := s.files()
	stamps := make([]stamp, len(files))
	for i, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			return s.keepOld(fmt.Errorf("tlsconf: %s: %w", s.what, err))
		}
		stamps[i] = stamp{fi.ModTime(), fi.Size()}
	}
	if s.cert != nil && slices.Equal(stamps, s.stamps) {
		return s.cert, s.pool, nil
	}
	cert, pool, err := s.read()
	if err != nil {
		s.stamps = stamps // once per change, not at every handshake
		return s.keepOld(err)
	}
	if s.cert != nil {
		s.logger.Info("TLS files changed: loaded them again", "which", s.what, "cert_file", s.certFile, "subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter)
	}
	s.cert, s.pool, s.stamps = cert, pool, stamps
	return cert, pool, nil
}

// keepOld answers with the last good certificate after a failed reload.
func (s *source) keepOld(err error) (*tls.Certificate, *x509.CertPool, error) {
	if s.cert == nil {
		return nil, nil, err
	}
	s.logger.Warn("TLS files changed but do not load; still using the ones loaded before", "which", s.what, "error", err)
	return s.cert, s.pool, nil
}

func (s *source) read() (*tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("tlsconf: %s certificate %s and key %s: %w", s.what, s.certFile, s.keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, nil, fmt.Errorf("tlsconf: %s certificate %s: %w", s.what, s.certFile, err)
		}
	}
	var pool *x509.CertPool
	switch {
	case s.caFile != "":
		if pool, err = readPool(s.caFile); err != nil {
			return nil, nil, fmt.Errorf("tlsconf: %s CA: %w", s.what, err)
		}
	case s.selfTrust:
		pool = x509.NewCertPool()
		pool.AddCert(cert.Leaf)
	}
	return &cert, pool, nil
}

// readPool reads a PEM bundle of CA certificates.
func readPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}
