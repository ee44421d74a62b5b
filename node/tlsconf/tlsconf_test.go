package tlsconf_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvstore/kvstore/node/tlsconf"
)

type pki struct {
	dir string
	ca  *tlsconf.CA
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := tlsconf.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: t.TempDir(), ca: ca}
	if err := os.WriteFile(filepath.Join(p.dir, "ca.pem"), ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *pki) issue(t *testing.T, req tlsconf.Request) (certFile, keyFile string) {
	t.Helper()
	if req.ValidFor == 0 {
		req.ValidFor = time.Hour
	}
	cert, key, err := p.ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := tlsconf.WriteFiles(p.dir, req.Name, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func (p *pki) pair(t *testing.T, req tlsconf.Request) tls.Certificate {
	t.Helper()
	c, k := p.issue(t, req)
	pair, err := tls.LoadX509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

func (p *pki) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Cert)
	return pool
}

// serve accepts TLS connections with cfg and reports each one's state.
func serve(t *testing.T, cfg *tls.Config) (string, <-chan tls.ConnectionState) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	states := make(chan tls.ConnectionState, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				tc.SetDeadline(time.Now().Add(10 * time.Second))
				if tc.Handshake() == nil {
					states <- tc.ConnectionState()
					tc.Write([]byte("x"))
					io.Copy(io.Discard, tc)
				}
			}()
		}
	}()
	return ln.Addr().String(), states
}

// dial handshakes and reads the server's byte: a client certificate the
// server refuses shows only then (TLS 1.3).
func dial(addr string, cfg *tls.Config) (*tls.ConnectionState, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return nil, err
	}
	st := c.(*tls.Conn).ConnectionState()
	return &st, nil
}

func TestTrustByALPN(t *testing.T) {
	p := newPKI(t)
	nodeCert, nodeKey := p.issue(t, tlsconf.Request{Kind: tlsconf.Node, Name: "n1", Hosts: []string{"127.0.0.1"}})
	tl, err := tlsconf.New(tlsconf.Config{CertFile: nodeCert, KeyFile: nodeKey, TrustedCAFile: filepath.Join(p.dir, "ca.pem"), ClientCertAuth: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, states := serve(t, tl.ServerConfig())
	peer := p.pair(t, tlsconf.Request{Kind: tlsconf.Node, Name: "n2", Hosts: []string{"127.0.0.1"}})
	alice := p.pair(t, tlsconf.Request{Kind: tlsconf.Client, Name: "alice"})
	other := newPKI(t)
	stranger := other.pair(t, tlsconf.Request{Kind: tlsconf.Node, Name: "n9", Hosts: []string{"127.0.0.1"}})

	for _, tc := range []struct {
		name   string
		cert   *tls.Certificate
		protos []string
		ok     bool
		peer   bool
	}{
		{"node cert, raft", &peer, []string{tlsconf.ALPNRaft}, true, true},
		{"node cert, group raft", &peer, []string{tlsconf.ALPNGroupRaft}, true, true},
		{"node cert, peer RPCs", &peer, []string{tlsconf.ALPNPeer}, true, true},
		{"node cert, h2", &peer, []string{"h2"}, true, false},
		{"client cert, h2", &alice, []string{"h2", "http/1.1"}, true, false},
		{"client cert, no ALPN", &alice, nil, true, false},
		{"client cert, raft", &alice, []string{tlsconf.ALPNRaft}, false, false},
		{"client cert, group raft", &alice, []string{tlsconf.ALPNGroupRaft}, false, false},
		{"client cert, raft and h2", &alice, []string{tlsconf.ALPNRaft, "h2"}, false, false},
		{"client cert, forward", &alice, []string{tlsconf.ALPNForward}, false, false},
		{"client cert, gossip", &alice, []string{tlsconf.ALPNGossip}, false, false},
		{"client cert, peer RPCs", &alice, []string{tlsconf.ALPNPeer}, false, false},
		{"no cert, raft", nil, []string{tlsconf.ALPNRaft}, false, false},
		{"no cert, h2 (client certs required)", nil, []string{"h2"}, false, false},
		{"other CA's node cert, raft", &stranger, []string{tlsconf.ALPNRaft}, false, false},
		{"other CA's node cert, h2", &stranger, []string{"h2"}, false, false},
		{"client cert, unknown protocol", &alice, []string{"kvstore-raft/2"}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &tls.Config{RootCAs: p.pool(), NextProtos: tc.protos}
			if tc.cert != nil {
				cfg.Certificates = []tls.Certificate{*tc.cert}
			}
			st, err := dial(addr, cfg)
			if (err == nil) != tc.ok {
				t.Fatalf("dial: %v, want ok %v", err, tc.ok)
			}
			if !tc.ok {
				return
			}
			srv := <-states
			if got := tlsconf.IsPeer(&srv); got != tc.peer {
				t.Fatalf("server: IsPeer %v (protocol %q), want %v", got, srv.NegotiatedProtocol, tc.peer)
			}
			if tc.peer && st.NegotiatedProtocol != tc.protos[0] {
				t.Fatalf("negotiated %q, want %q", st.NegotiatedProtocol, tc.protos[0])
			}
		})
	}
}

// TestDialPeer: a node dials another with its peer certificate, verifies
// the other's against the peer CA and the address, and needs the protocol
// it asked for.
func TestDialPeer(t *testing.T) {
	p := newPKI(t)
	c1, k1 := p.issue(t, tlsconf.Request{Kind: tlsconf.Node, Name: "n1", Hosts: []string{"127.0.0.1"}})
	c2, k2 := p.issue(t, tlsconf.Request{Kind: tlsconf.Node, Name: "n2", Hosts: []string{"127.0.0.1"}})
	ca := filepath.Join(p.dir, "ca.pem")
	server, err := tlsconf.New(tlsconf.Config{CertFile: c1, KeyFile: k1, TrustedCAFile: ca}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dialer, err := tlsconf.New(tlsconf.Config{CertFile: c2, KeyFile: k2, TrustedCAFile: ca}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, states := serve(t, server.ServerConfig())
	ctx := context.Background()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := dialer.DialPeer(ctx, raw, tlsconf.ALPNGossip, addr)
	if err != nil {
		t.Fatal(err)
	}
	tc.Close()
	if st := <-states; !tlsconf.IsPeer(&st) || st.NegotiatedProtocol != tlsconf.ALPNGossip {
		t.Fatalf("server saw %q, peer %v", st.NegotiatedProtocol, tlsconf.IsPeer(&st))
	}
	// The address dialed is not in the certificate: refused.
	raw, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	if _, err := dialer.DialPeer(ctx, raw, tlsconf.ALPNGossip, net.JoinHostPort("localhost", port)); err == nil {
		t.Fatal("dialed a node whose certificate is not for the name dialed")
	}
}

// TestReload: changed files are used from the next handshake on; files
// that do not load leave the last good ones in use.
func TestReload(t *testing.T) {
	p := newPKI(t)
	certFile, keyFile := p.issue(t, tlsconf.Request{Kind: tlsconf.Node, Name: "n1", Hosts: []string{"127.0.0.1"}})
	tl, err := tlsconf.New(tlsconf.Config{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: filepath.Join(p.dir, "ca.pem")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, states := serve(t, tl.ServerConfig())
	serialNow := func() string {
		t.Helper()
		st, err := dial(addr, &tls.Config{RootCAs: p.pool()})
		if err != nil {
			t.Fatal(err)
		}
		<-states
		return st.PeerCertificates[0].SerialNumber.String()
	}
	first := serialNow()
	if serialNow() != first {
		t.Fatal("certificate changed with no change of files")
	}
	replace := func(cert, key []byte, age time.Duration) {
		t.Helper()
		for f, b := range map[string][]byte{certFile: cert, keyFile: key} {
			if err := os.WriteFile(f, b, 0o600); err != nil {
				t.Fatal(err)
			}
			// A modification time of its own, whatever the clock's
			// resolution.
			mt := time.Now().Add(age)
			if err := os.Chtimes(f, mt, mt); err != nil {
				t.Fatal(err)
			}
		}
	}
	cert, key, err := p.ca.Issue(tlsconf.Request{Kind: tlsconf.Node, Name: "n1", Hosts: []string{"127.0.0.1"}, ValidFor: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	replace(cert, key, time.Minute)
	second := serialNow()
	if second == first {
		t.Fatal("new files not loaded")
	}
	replace([]byte("not a certificate"), key, 2*time.Minute)
	if got := serialNow(); got != second {
		t.Fatalf("broken files: serving %s, want the last good %s", got, second)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  tlsconf.Config
		want string
	}{
		{tlsconf.Config{}, ""},
		{tlsconf.Config{AutoTLS: true}, ""},
		{tlsconf.Config{CertFile: "c", KeyFile: "k", TrustedCAFile: "ca"}, ""},
		{tlsconf.Config{CertFile: "c", KeyFile: "k", PeerTrustedCAFile: "ca"}, ""},
		{tlsconf.Config{CertFile: "c"}, "go together"},
		{tlsconf.Config{CertFile: "c", KeyFile: "k"}, "peers need a CA"},
		{tlsconf.Config{CertFile: "c", KeyFile: "k", PeerTrustedCAFile: "ca", ClientCertAuth: true}, "client cert auth needs"},
		{tlsconf.Config{AutoTLS: true, PeerCertFile: "c"}, "go together"},
		{tlsconf.Config{ClientCertAuth: true}, "without a certificate"},
		{tlsconf.Config{AutoTLS: true, MinVersion: tls.VersionTLS11}, "want TLS 1.2 or 1.3"},
	} {
		err := tc.cfg.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
	for s, want := range map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13, "TLS1.3": tls.VersionTLS13} {
		if v, err := tlsconf.ParseVersion(s); err != nil || v != want {
			t.Errorf("ParseVersion(%q) = %x, %v", s, v, err)
		}
	}
	if _, err := tlsconf.ParseVersion("1.0"); err == nil {
		t.Error("ParseVersion(1.0) passed")
	}
}

func TestIssueRefusals(t *testing.T) {
	ca, err := tlsconf.NewCA("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []tlsconf.Request{
		{Kind: tlsconf.Node, Name: "n1", ValidFor: time.Hour},
		{Kind: tlsconf.Client, Name: "alice", Hosts: []string{"127.0.0.1"}, ValidFor: time.Hour},
		{Kind: tlsconf.Client, ValidFor: time.Hour},
		{Kind: tlsconf.Client, Name: "alice"},
	} {
		if _, _, err := ca.Issue(req); err == nil {
			t.Errorf("Issue(%+v) passed", req)
		}
	}
	dir := t.TempDir()
	cert, key, err := ca.Issue(tlsconf.Request{Kind: tlsconf.Client, Name: "alice", ValidFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tlsconf.WriteFiles(dir, "alice", cert, key); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tlsconf.WriteFiles(dir, "alice", cert, key); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second write: %v, want ErrExist", err)
	}
	fi, err := os.Stat(filepath.Join(dir, "alice-key.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi.Mode(), err)
	}
}

// TestSeparatePeerCA: with a peer CA of its own, a node certificate from
// the client CA is no peer's, and one from the peer CA is no client's.
func TestSeparatePeerCA(t *testing.T) {
	clients, peers := newPKI(t), newPKI(t)
	certFile, keyFile := clients.issue(t, tlsconf.Request{Kind: tlsconf.Node, Name: "n1", Hosts: []string{"127.0.0.1"}})
	peerCert, peerKey := peers.issue(t, tlsconf.Request{Kind: tlsconf.Node, Name: "n1", Hosts: []string{"127.0.0.1"}})
	tl, err := tlsconf.New(tlsconf.Config{
		CertFile: certFile, KeyFile: keyFile, TrustedCAFile: filepath.Join(clients.dir, "ca.pem"), ClientCertAuth: true,
		PeerCertFile: peerCert, PeerKeyFile: peerKey, PeerTrustedCAFile: filepath.Join(peers.dir, "ca.pem"),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, states := serve(t, tl.ServerConfig())
	clientSideNode := clients.pair(t, tlsconf.Request{Kind: tlsconf.Node, Name: "n2", Hosts: []string{"127.0.0.1"}})
	peerSideNode := peers.pair(t, tlsconf.Request{Kind: tlsconf.Node, Name: "n3", Hosts: []string{"127.0.0.1"}})
	try := func(cert tls.Certificate, roots *x509.CertPool, proto string) error {
		_, err := dial(addr, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, NextProtos: []string{proto}})
		if err == nil {
			<-states
		}
		return err
	}
	if err := try(peerSideNode, peers.pool(), tlsconf.ALPNRaft); err != nil {
		t.Fatalf("peer CA's node certificate, raft: %v", err)
	}
	if err := try(clientSideNode, peers.pool(), tlsconf.ALPNRaft); err == nil {
		t.Fatal("client CA's node certificate reached raft")
	}
	if err := try(clientSideNode, clients.pool(), "h2"); err != nil {
		t.Fatalf("client CA's certificate, h2: %v", err)
	}
	if err := try(peerSideNode, clients.pool(), "h2"); err == nil {
		t.Fatal("peer CA's certificate passed as a client's")
	}
}

// TestAutoTLSWithClientCA: an auto TLS node requiring client certificates
// checks them against its client CA, not the system's roots.
func TestAutoTLSWithClientCA(t *testing.T) {
	p := newPKI(t)
	tl, err := tlsconf.New(tlsconf.Config{AutoTLS: true, TrustedCAFile: filepath.Join(p.dir, "ca.pem"), ClientCertAuth: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, states := serve(t, tl.ServerConfig())
	alice := p.pair(t, tlsconf.Request{Kind: tlsconf.Client, Name: "alice"})
	if _, err := dial(addr, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{alice}}); err != nil {
		t.Fatalf("client certificate from the CA: %v", err)
	}
	<-states
	stranger := newPKI(t).pair(t, tlsconf.Request{Kind: tlsconf.Client, Name: "mallory"})
	for _, certs := range [][]tls.Certificate{nil, {stranger}} {
		if _, err := dial(addr, &tls.Config{InsecureSkipVerify: true, Certificates: certs}); err == nil {
			t.Fatalf("admitted with %d certificates not from the CA", len(certs))
		}
	}
}
