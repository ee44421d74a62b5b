// Package node runs one kvstore node: one TCP port split by the first byte
// of each connection between raft and the HTTP server (Connect, gRPC,
// gRPC-Web, health), raft over Badger, and the API on top. cmd/kvd is a thin
// shell around it; tests and programs that embed kvstore start nodes with
// Start.
package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/storage"
)

// Config describes a node. The zero value of every field but DataDir has a
// working default.
type Config struct {
	// DataDir holds the node's identity, raft log, key-value state and
	// snapshots.
	DataDir string
	// Listen is the TCP address (and UDP port, later) of the node's one port;
	// default 127.0.0.1:7379. Port 0 picks a free port.
	Listen string
	// Advertise is the address other nodes and clients dial; default the
	// listen address.
	Advertise string
	// Name is the node id. Empty: the id stored in the data dir, or a new
	// random one on first start.
	Name string
	// Limits bound requests; zero fields take api.DefaultLimits.
	Limits api.Limits
	// RequestTimeout bounds requests that come without a deadline.
	RequestTimeout time.Duration
	// HeartbeatTimeout and ElectionTimeout tune raft; 0 takes 1s.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// SnapshotThreshold is how many log entries since the last snapshot
	// start a new one; 0 takes DefaultSnapshotThreshold.
	SnapshotThreshold uint64
	// Version is reported by Status.
	Version string
	Logger  *slog.Logger
}

// DefaultListen is the address a node listens on when none is given.
const DefaultListen = "127.0.0.1:7379"

// DefaultSnapshotThreshold is how many log entries start a snapshot. A
// snapshot copies the whole store, history included, so it is taken rarely,
// as etcd does (--snapshot-count 100000); raft keeps 10,240 entries after
// one for followers that lag.
const DefaultSnapshotThreshold = 65536

// Node is one running kvstore node.
type Node struct {
	id        string
	advertise string
	dataDir   string
	logger    *slog.Logger

	mux     *Mux
	http    *http.Server
	replica *consensus.Replica
	logs    *storage.RaftStore
	kv      *storage.KV
	done    chan struct{} // closed when the serve goroutines have returned
	stopGC  chan struct{}
	gcDone  chan struct{}
}

// gcInterval is how often the stores reclaim value log space.
const gcInterval = 10 * time.Minute

// collectGarbage runs value log GC on both stores until Close.
func (n *Node) collectGarbage() {
	defer close(n.gcDone)
	t := time.NewTicker(gcInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stopGC:
			return
		case <-t.C:
			n.logs.RunGC()
			n.kv.RunGC()
		}
	}
}

// Start opens the data dir, binds the port and starts serving. The node
// bootstraps a one-node cluster when its data dir holds no raft state.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	if cfg.DataDir == "" {
		return nil, errors.New("node: data dir is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	cfg.Limits = cfg.Limits.WithDefaults()
	if cfg.SnapshotThreshold == 0 {
		cfg.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("node: create data dir: %w", err)
	}
	id, err := loadID(cfg.DataDir, cfg.Name)
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger.With("node", id)

	var cleanup []func()
	defer func() {
		if err != nil {
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()

	logs, err := storage.OpenRaftStore(filepath.Join(cfg.DataDir, "raft"), logger)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	cleanup = append(cleanup, func() { logs.Close() })
	kv, err := storage.OpenKV(filepath.Join(cfg.DataDir, "kv"), logger)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	cleanup = append(cleanup, func() { kv.Close() })
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, consensus.NewHCLogger(logger, "snapshots", hclog.Info))
	if err != nil {
		return nil, fmt.Errorf("node: snapshot store: %w", err)
	}

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("node: listen: %w", err)
	}
	cleanup = append(cleanup, func() { ln.Close() })
	advertise, err := advertiseAddr(cfg.Advertise, ln.Addr().(*net.TCPAddr), logger)
	if err != nil {
		return nil, err
	}
	mux := NewMux(ln, logger)
	stream := consensus.NewStreamLayer(mux.Listener(MuxByteRaft), advertise, nil)
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  consensus.NewHCLogger(logger, "raft-net", hclog.Warn),
	})
	cleanup = append(cleanup, func() { trans.Close() })

	replica, err := consensus.NewReplica(consensus.Config{
		ID:                id,
		Logs:              logs,
		Stable:            logs,
		Snapshots:         snaps,
		Transport:         trans,
		KV:                kv,
		Limits:            consensus.Limits{MaxRangePairs: cfg.Limits.MaxRangePairs, MaxRangeBytes: cfg.Limits.MaxRequestBytes},
		Bootstrap:         true,
		HeartbeatTimeout:  cfg.HeartbeatTimeout,
		ElectionTimeout:   cfg.ElectionTimeout,
		SnapshotThreshold: cfg.SnapshotThreshold,
		Logger:            logger,
	})
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	// h2c with prior knowledge: what gRPC clients speak without TLS.
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler: api.NewHandler(replica, api.Options{
			Limits:         cfg.Limits,
			DefaultTimeout: cfg.RequestTimeout,
			Version:        cfg.Version,
			Logger:         logger,
		}),
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.With("component", "http").Handler(), slog.LevelWarn),
	}

	n := &Node{
		id:        id,
		advertise: advertise.String(),
		dataDir:   cfg.DataDir,
		logger:    logger,
		mux:       mux,
		http:      srv,
		replica:   replica,
		logs:      logs,
		kv:        kv,
		done:      make(chan struct{}),
		stopGC:    make(chan struct{}),
		gcDone:    make(chan struct{}),
	}
	go n.collectGarbage()
	serveErr := make(chan error, 2)
	go func() { serveErr <- mux.Serve() }()
	go func() { serveErr <- srv.Serve(mux.Default()) }()
	go func() {
		for range 2 {
			if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				logger.Error("serving stopped", "error", err)
			}
		}
		close(n.done)
	}()
	logger.Info("node started", "id", id, "listen", ln.Addr().String(), "advertise", n.advertise, "data_dir", cfg.DataDir)
	return n, nil
}

// loadID returns the node's id: the one in <data-dir>/node-id, created on
// first start from name or at random. A name that disagrees with the stored
// id is refused: the data belongs to another node.
func loadID(dir, name string) (string, error) {
	path := filepath.Join(dir, "node-id")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		stored := strings.TrimSpace(string(b))
		if name != "" && name != stored {
			return "", fmt.Errorf("node: --name %q but the data dir %s belongs to node %q", name, dir, stored)
		}
		return stored, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("node: read node id: %w", err)
	}
	id := name
	if id == "" {
		var r [6]byte
		if _, err := rand.Read(r[:]); err != nil {
			return "", fmt.Errorf("node: new node id: %w", err)
		}
		id = "kvd-" + hex.EncodeToString(r[:])
	}
	if strings.ContainsAny(id, " \t\r\n/") {
		return "", fmt.Errorf("node: node id %q has spaces or slashes", id)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("node: write node id: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("node: write node id: %w", err)
	}
	return id, nil
}

// advertiseAddr resolves the address other nodes dial. A wildcard listen
// address cannot be dialled, so without --advertise it becomes loopback.
func advertiseAddr(advertise string, bound *net.TCPAddr, logger *slog.Logger) (*net.TCPAddr, error) {
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			return nil, fmt.Errorf("node: advertise address %q: %w", advertise, err)
		}
		if a.IP == nil || a.IP.IsUnspecified() || a.Port == 0 {
			return nil, fmt.Errorf("node: advertise address %q must name a host and a port", advertise)
		}
		return a, nil
	}
	a := *bound
	if a.IP.IsUnspecified() {
		a.IP = net.IPv4(127, 0, 0, 1)
		logger.Warn("listening on a wildcard address without --advertise; advertising loopback, which other hosts cannot reach", "advertise", a.String())
	}
	return &a, nil
}

// ID is the node's id.
func (n *Node) ID() string { return n.id }

// Addr is the node's advertised address, host:port.
func (n *Node) Addr() string { return n.advertise }

// URL is the base URL of the node's API.
func (n *Node) URL() string { return "http://" + n.advertise }

// Ready returns why the node cannot serve requests yet, or nil.
func (n *Node) Ready() error { return n.replica.Ready() }

// WaitReady waits until the node can serve requests.
func (n *Node) WaitReady(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		err := n.Ready()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not ready: %w (%w)", n.id, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// Close stops the node: the HTTP server finishes the requests in flight
// (until ctx ends), raft shuts down, and the stores are closed.
func (n *Node) Close(ctx context.Context) error {
	var errs []error
	if err := n.http.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		n.http.Close()
	}
	if err := n.replica.Shutdown(); err != nil {
		errs = append(errs, err)
	}
	if err := n.mux.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close listener: %w", err))
	}
	<-n.done
	close(n.stopGC)
	<-n.gcDone
	if err := n.kv.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := n.logs.Close(); err != nil {
		errs = append(errs, err)
	}
	n.logger.Info("node stopped")
	return errors.Join(errs...)
}
