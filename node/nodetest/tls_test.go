package nodetest_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/api/client"
	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	"github.com/kvstore/kvstore/node/tlsconf"
	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
	"github.com/kvstore/kvstore/proto/kvstore/peer/v1/peerv1connect"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// TestTLSCluster runs a three-node cluster with TLS and client
// certificates required: it forms (raft, gossip streams and forwarding over
// TLS with peer certificates), and serves puts, gets and a watch through
// every node, writes through a follower forwarded to the leader.
func TestTLSCluster(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3, nodetest.WithTLS())
	leader := c.Leader(ctx)
	for _, ep := range c.Client().Endpoints() {
		if !strings.HasPrefix(ep, "https://") {
			t.Fatalf("endpoint %s: want https", ep)
		}
	}
	w := c.Client().Watch(ctx, &kvstorev1.WatchRequest{Key: []byte("tls/"), Prefix: true})
	defer w.Close()
	if !w.Receive() {
		t.Fatalf("watch: %v", w.Err())
	}
	var want []string
	for _, nd := range c.Nodes() {
		key := "tls/" + nd.Name()
		resp, err := put(ctx, nd.Client().KV, key, nd.Name())
		if err != nil {
			t.Fatalf("put through %s: %v", nd.Name(), err)
		}
		if got := resp.GetHeader().GetNodeId(); got != leader.Name() {
			t.Fatalf("put through %s served by %s, want the leader %s", nd.Name(), got, leader.Name())
		}
		want = append(want, key)
		for _, r := range c.Nodes() {
			got, err := get(ctx, r.Client().KV, key, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
			if err != nil {
				t.Fatalf("linearizable get of %s on %s: %v", key, r.Name(), err)
			}
			if string(got.GetKv().GetValue()) != nd.Name() {
				t.Fatalf("get of %s on %s: %v", key, r.Name(), got)
			}
		}
	}
	var seen []string
	for len(seen) < len(want) && w.Receive() {
		for _, ev := range w.Msg().GetEvents() {
			seen = append(seen, string(ev.GetKv().GetKey()))
		}
	}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("watch saw %v (err %v), want %v", seen, w.Err(), want)
	}
	for _, proto := range []string{client.ProtocolGRPC, client.ProtocolGRPCWeb} {
		cl, err := client.New(c.Endpoints(), client.WithTLS(c.PKI().ClientConfig()), client.WithProtocol(proto))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if _, err := put(ctx, cl.KV, "tls/"+proto, proto); err != nil {
			t.Fatalf("put over %s: %v", proto, err)
		}
	}
}

// TestTLSClientCertCannotReachPeers holds a client certificate from the
// very CA that signs the nodes' and tries every way to raft, the forward
// path and the peer services; and plaintext, and no certificate at all.
func TestTLSClientCertCannotReachPeers(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 1, nodetest.WithTLS())
	nd := c.Nodes()[0]
	addr := nd.Addr()
	clientCfg := c.PKI().ClientConfig()

	// Offering a peer protocol with a client certificate: the handshake
	// fails (it is no node certificate).
	for _, proto := range tlsconf.PeerProtocols {
		cfg := clientCfg.Clone()
		cfg.NextProtos = []string{proto}
		if err := handshake(ctx, addr, cfg); err == nil {
			t.Errorf("client certificate offering %s: handshake succeeded", proto)
		}
	}
	// No certificate at all, offering a peer protocol.
	cfg := clientCfg.Clone()
	cfg.Certificates = nil
	cfg.NextProtos = []string{tlsconf.ALPNRaft}
	if err := handshake(ctx, addr, cfg); err == nil {
		t.Error("no certificate offering raft: handshake succeeded")
	}
	// A certificate from another CA that looks like a node's.
	other, err := tlsconf.NewCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := other.Issue(tlsconf.Request{Kind: tlsconf.Node, Name: "intruder", Hosts: []string{"127.0.0.1"}, ValidFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	intruder, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg = clientCfg.Clone()
	cfg.Certificates = []tls.Certificate{intruder}
	cfg.NextProtos = []string{tlsconf.ALPNRaft}
	if err := handshake(ctx, addr, cfg); err == nil {
		t.Error("a node certificate of another CA offering raft: handshake succeeded")
	}

	// An API connection (h2 / http/1.1) carrying a peer path's byte is
	// closed before anything reads it.
	for _, b := range []byte{0x01, 0x02, 0x03, 0x04} {
		cfg := clientCfg.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write([]byte{b, 0x05, 'h', 'e', 'l', 'l', 'o'})
		n, err := io.Copy(io.Discard, conn)
		conn.Close()
		if n != 0 || err != nil && !errors.Is(err, io.EOF) && !isReset(err) {
			t.Errorf("byte 0x%02x over an API connection: read %d bytes, %v; want it closed at once", b, n, err)
		}
	}

	// The peer services over a client's TLS connection, by both RPC
	// stacks (gRPC goes to grpc-go, Connect to net/http).
	for _, opt := range []connect.ClientOption{connect.WithGRPC(), connect.WithProtoJSON()} {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: clientCfg.Clone(), ForceAttemptHTTP2: true}}
		pc := peerv1connect.NewPeerServiceClient(hc, "https://"+addr, opt)
		_, err := pc.ReadIndex(ctx, connect.NewRequest(&peerv1.ReadIndexRequest{}))
		if connect.CodeOf(err) != connect.CodeUnimplemented {
			t.Errorf("ReadIndex with a client certificate: %v, want Unimplemented (the peer services are not on the API's path)", err)
		}
		stream, err := pc.FetchState(ctx, connect.NewRequest(&peerv1.FetchStateRequest{}))
		if err == nil {
			for stream.Receive() {
				t.Error("FetchState with a client certificate sent a message")
			}
			err = stream.Err()
			stream.Close()
		}
		if connect.CodeOf(err) != connect.CodeUnimplemented {
			t.Errorf("FetchState with a client certificate: %v, want Unimplemented (the peer services are not on the API's path)", err)
		}
		_, err = pc.GossipKeys(ctx, connect.NewRequest(&peerv1.GossipKeysRequest{Action: kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_INSTALL, Key: []byte("0123456789abcdef")}))
		if connect.CodeOf(err) != connect.CodeUnimplemented {
			t.Errorf("PeerService.GossipKeys with a client certificate: %v, want Unimplemented (the peer services are not on the API's path)", err)
		}
		hc.CloseIdleConnections()
	}

	// Plaintext: a peer path's byte is closed; an HTTP request is told to
	// use TLS.
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	conn.Write([]byte{0x01, 0x05, 'h', 'e', 'l', 'l', 'o'})
	if n, _ := io.Copy(io.Discard, conn); n != 0 {
		t.Errorf("plaintext raft byte: read %d bytes, want the connection closed", n)
	}
	conn.Close()
	resp, err := http.Get("http://" + addr + "/healthz")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "TLS") {
			t.Errorf("plaintext HTTP: %d %q, want 400 saying TLS", resp.StatusCode, b)
		}
	}

	// Plaintext API clients are refused: Connect with a Connect error that
	// says why, gRPC (h2c) with a GOAWAY of INADEQUATE_SECURITY, which Go's
	// HTTP/2 transport reports as such or, when it fails the connection
	// first, as a connection it could not establish.
	for proto, want := range map[string]string{client.ProtocolConnect: "serves TLS only", client.ProtocolGRPC: "unavailable"} {
		cl, err := client.New([]string{addr}, client.WithProtocol(proto))
		if err != nil {
			t.Fatal(err)
		}
		_, err = get(ctx, cl.KV, "k", kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE)
		cl.Close()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("plaintext %s client: %v, want an error saying %q", proto, err, want)
		}
	}

	// And the cluster still serves its client.
	if _, err := put(ctx, nd.Client().KV, "k", "v"); err != nil {
		t.Fatal(err)
	}
}

func handshake(ctx context.Context, addr string, cfg *tls.Config) error {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	// TLS 1.3: the server's verdict on the client certificate comes after
	// the client's handshake ends, as an alert; read to hear it. A
	// connection admitted stays open, waiting for its first byte.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	if err != nil && strings.Contains(err.Error(), "remote error: tls") {
		return err
	}
	return nil
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

// TestGossipKeyRotation rotates a live TLS cluster's gossip key (install,
// use, remove) through one node, checks every member's keyring after each
// step, and restarts a node with only the old key given: the keyring it
// kept in its data dir brings it back into the cluster.
func TestGossipKeyRotation(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3, nodetest.WithTLS())
	cl := c.Nodes()[1].Client()
	newKey := []byte("fedcba9876543210fedcba9876543210")
	step := func(action kvstorev1.GossipKeyAction, key []byte) []*kvstorev1.GossipKeyring {
		t.Helper()
		resp, err := cl.Cluster.GossipKeys(ctx, connect.NewRequest(&kvstorev1.GossipKeysRequest{Action: action, Key: key}))
		if err != nil {
			t.Fatalf("%v: %v", action, err)
		}
		ms := resp.Msg.GetMembers()
		if len(ms) != 3 {
			t.Fatalf("%v: %d members answered, want 3: %v", action, len(ms), ms)
		}
		for _, m := range ms {
			if m.GetError() != "" {
				t.Fatalf("%v on %s: %s", action, m.GetNodeId(), m.GetError())
			}
		}
		return ms
	}
	// listAll polls until every member is alive in cl's gossip and answers.
	listAll := func() []*kvstorev1.GossipKeyring {
		t.Helper()
		var last []*kvstorev1.GossipKeyring
		err := pollOK(ctx, func() error {
			resp, err := cl.Cluster.GossipKeys(ctx, connect.NewRequest(&kvstorev1.GossipKeysRequest{Action: kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_LIST}))
			if err != nil {
				return err
			}
			last = resp.Msg.GetMembers()
			if len(last) != 3 {
				return fmt.Errorf("%d members answered", len(last))
			}
			for _, m := range last {
				if m.GetError() != "" {
					return fmt.Errorf("%s: %s", m.GetNodeId(), m.GetError())
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("list: %v (last: %v)", err, last)
		}
		return last
	}
	before := listAll()
	oldFP := before[0].GetPrimary()
	for _, m := range before {
		if m.GetPrimary() != oldFP || len(m.GetKeys()) != 1 {
			t.Fatalf("before: %v", before)
		}
	}
	for _, m := range step(kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_INSTALL, newKey) {
		if m.GetPrimary() != oldFP || len(m.GetKeys()) != 2 {
			t.Fatalf("after install: %v", m)
		}
	}
	var newFP string
	for _, m := range step(kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_USE, newKey) {
		if m.GetPrimary() == oldFP || len(m.GetKeys()) != 2 {
			t.Fatalf("after use: %v", m)
		}
		newFP = m.GetPrimary()
	}
	// The old key is gone everywhere.
	resp, err := cl.Cluster.GossipKeys(ctx, connect.NewRequest(&kvstorev1.GossipKeysRequest{Action: kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_REMOVE, Key: []byte("0123456789abcdef0123456789abcdef")}))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range resp.Msg.GetMembers() {
		if m.GetError() != "" || m.GetPrimary() != newFP || len(m.GetKeys()) != 1 {
			t.Fatalf("after remove: %v", m)
		}
	}
	// Removing the primary key is refused on every member.
	resp, err = cl.Cluster.GossipKeys(ctx, connect.NewRequest(&kvstorev1.GossipKeysRequest{Action: kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_REMOVE, Key: newKey}))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range resp.Msg.GetMembers() {
		if !strings.Contains(m.GetError(), "primary") {
			t.Fatalf("removing the primary key on %s: %q, want a refusal", m.GetNodeId(), m.GetError())
		}
	}
	// A bad key is the caller's mistake.
	_, err = cl.Cluster.GossipKeys(ctx, connect.NewRequest(&kvstorev1.GossipKeysRequest{Action: kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_INSTALL, Key: []byte("short")}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("short key: %v, want InvalidArgument", err)
	}

	// n3 restarts with the old --gossip-key: its keyring file wins.
	n3 := c.Nodes()[2]
	n3.Kill()
	// A member gossip holds as down is reported, not left out.
	err = pollOK(ctx, func() error {
		resp, err := cl.Cluster.GossipKeys(ctx, connect.NewRequest(&kvstorev1.GossipKeysRequest{Action: kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_LIST}))
		if err != nil {
			return err
		}
		for _, m := range resp.Msg.GetMembers() {
			if m.GetNodeId() == n3.Name() && strings.Contains(m.GetError(), "not reached") {
				return nil
			}
		}
		return fmt.Errorf("n3 not reported as down: %v", resp.Msg.GetMembers())
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := n3.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitMembers(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := put(ctx, n3.Client().KV, "after-rotation", "v"); err != nil {
		t.Fatal(err)
	}
	// Raft needs no gossip, so n2 may still hold n3 as dead.
	for _, m := range listAll() {
		if m.GetPrimary() != newFP {
			t.Fatalf("after restart: %v", m)
		}
	}
}

// TestTLSAllowPlaintextClients: with AllowPlaintextClients, plaintext API
// clients are served beside TLS ones, and peers still need TLS.
func TestTLSAllowPlaintextClients(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 3, nodetest.WithTLS(), nodetest.WithConfig(func(_ string, cfg *node.Config) {
		cfg.AllowPlaintextClients = true
	}))
	leader := c.Leader(ctx)
	var follower *nodetest.Node
	for _, nd := range c.Nodes() {
		if nd.Name() != leader.Name() {
			follower = nd
		}
	}
	for _, proto := range []string{client.ProtocolConnect, client.ProtocolGRPC} {
		plain, err := client.New([]string{follower.Addr()}, client.WithProtocol(proto))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := put(ctx, plain.KV, "plain/"+proto, "v"); err != nil {
			t.Fatalf("plaintext %s put through a follower: %v", proto, err)
		}
		plain.Close()
	}
	got, err := get(ctx, follower.Client().KV, "plain/grpc", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
	if err != nil || string(got.GetKv().GetValue()) != "v" {
		t.Fatalf("TLS get: %v, %v", got, err)
	}
	// A plaintext raft connection is still refused.
	conn, err := net.DialTimeout("tcp", follower.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	conn.Write([]byte{0x01, 0x05, 'h', 'e', 'l', 'l', 'o'})
	if n, _ := io.Copy(io.Discard, conn); n != 0 {
		t.Errorf("plaintext raft byte: read %d bytes, want the connection closed", n)
	}
}

// TestTLSRefusedClientCertificateToldSo: a client without a certificate,
// or with one the CA did not sign, learns (TLS 1.3) that it was refused
// only after it has sent its request; it must be told why (the node's
// alert, "certificate required"), not get a reset or a broken pipe that
// lost it, as Go's HTTP/2 client (kvctl's) did 14 and 23 times in 50
// before the node read what the client sent before closing.
func TestTLSRefusedClientCertificateToldSo(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	c := nodetest.NewCluster(t, 1, nodetest.WithTLS())
	url := "https://" + c.Nodes()[0].Addr() + "/kvstore.v1.KVService/Get"
	stranger, err := tlsconf.NewCA("stranger CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := stranger.Issue(tlsconf.Request{Kind: tlsconf.Client, Name: "client", ValidFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Repeat("x", 4096)
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
		want  string
	}{
		{"no certificate", nil, "remote error: tls: certificate required"},
		{"another CA's certificate", []tls.Certificate{foreign}, "remote error: tls: "},
	} {
		told := map[string]int{}
		for range 50 {
			cfg := c.PKI().ClientConfig()
			cfg.Certificates = tc.certs
			tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true, ForceAttemptHTTP2: true}
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("%s: answered %s", tc.name, resp.Status)
			}
			switch msg := err.Error(); {
			case strings.Contains(msg, tc.want):
				told["told"]++
			case strings.HasSuffix(msg, "http2: client conn could not be established"),
				strings.HasSuffix(msg, "http2: client conn is closed"):
				// Go's HTTP/2 client drops the cause when the first read
				// of a new connection fails (the server's SETTINGS never
				// came), or when the alert closes the connection before it
				// takes the request: nothing the node can say gets through.
				told["cause dropped by the client"]++
			default:
				t.Fatalf("%s: %v; want %q", tc.name, err, tc.want)
			}
		}
		if told["told"] == 0 {
			t.Errorf("%s: never told: %v", tc.name, told)
		}
		t.Logf("%s: %v", tc.name, told)
	}
}
