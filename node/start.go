package node

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/api/etcd"
	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/membership"
	"github.com/kvstore/kvstore/node/tlsconf"
	"github.com/kvstore/kvstore/storage"
)

// Start opens the data dir, binds the port and starts serving. The node
// bootstraps a one-node cluster when its data dir holds no raft state.
//
// A Config that Validate refuses fails before anything is created; a start
// that fails later undoes the steps done so far, newest first, and removes
// the data dir if it created it.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &starter{cfg: cfg.withStartDefaults(), n: new(Node)}
	defer func() {
		if err != nil {
			s.undo()
		}
	}()
	for _, step := range []func(context.Context) error{
		s.bindPort,
		s.openDataDir,
		s.openDisk,
		s.openRaftLog,
		s.openState,
		s.buildTransport,
		s.startRaft,
		s.startGossip,
		s.buildAPI,
	} {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	s.serve()
	s.startLoops()
	s.n.logger.Info("node started", "id", s.n.id, "listen", s.ln.Addr().String(), "advertise", s.n.advertise, "data_dir", s.cfg.DataDir, "cluster_id", orNone(s.n.ident.ID()))
	return s.n, nil
}

// withStartDefaults fills in the defaults Start needs up front.
func (cfg Config) withStartDefaults() Config {
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
	if cfg.SnapshotInterval == 0 {
		cfg.SnapshotInterval = DefaultSnapshotInterval
	}
	return cfg
}

// starter carries a node through Start's steps: the node as far as it is
// built, what the later steps need from the earlier ones, and how to undo
// each step that succeeded.
type starter struct {
	cfg Config
	n   *Node

	undos []func() // run newest first when a later step fails

	ln        net.Listener
	advertise *net.TCPAddr
	fwd       *api.ForwardServer
	sizing    storage.Sizing
	snaps     raft.SnapshotStore
	state     *stateOpener
	hadState  bool
	alone     bool // the node bootstraps a cluster of its own
	kick      chan struct{}
	tls       *tlsconf.TLS // nil: TLS off
}

// onFail registers how to undo a step that succeeded.
func (s *starter) onFail(f func()) { s.undos = append(s.undos, f) }

func (s *starter) undo() {
	for _, f := range slices.Backward(s.undos) {
		f()
	}
}

// bindPort binds the node's one port, first: a port in use (another kvd)
// is the likeliest failure, and it should not leave a data dir behind.
func (s *starter) bindPort(ctx context.Context) error {
	ln, udp, err := listen(ctx, s.cfg.Listen)
	if err != nil {
		return err
	}
	s.onFail(func() { ln.Close(); udp.Close() })
	s.ln, s.n.udp = ln, udp
	return nil
}

// openDataDir creates the data dir if needed and reads or makes the node's
// id in it.
func (s *starter) openDataDir(context.Context) error {
	created, err := createDir(s.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("node: create data dir: %w", err)
	}
	if created != "" {
		// Runs last, after the stores in it are closed.
		s.onFail(func() { os.RemoveAll(created) })
	}
	id, err := loadID(s.cfg.DataDir, s.cfg.Name)
	if err != nil {
		return err
	}
	s.n.id, s.n.dataDir = id, s.cfg.DataDir
	s.n.logger = s.cfg.Logger.With("node", id)
	return nil
}

// openDisk starts the disk guard and sizes the stores to the filesystem.
func (s *starter) openDisk(context.Context) error {
	disk, sizing, err := openDisk(s.cfg, s.n.logger)
	if err != nil {
		return err
	}
	s.onFail(disk.Close)
	s.n.disk, s.sizing = disk, sizing
	return nil
}

// openRaftLog migrates a raft log kept in Badger by an older release, then
// opens the raft log and the snapshot store.
func (s *starter) openRaftLog(context.Context) error {
	dir, logger := s.cfg.DataDir, s.n.logger
	if err := migrateRaftLog(dir, s.sizing.RaftSegment, logger); err != nil {
		return err
	}
	logs, err := openRaftLog(dir, s.sizing.RaftSegment, s.cfg.RaftLogFS, s.n.disk, logger)
	if err != nil {
		return err
	}
	s.onFail(func() { logs.Close() })
	s.n.logs, s.n.raftDir = logs, filepath.Join(dir, raftLogDir)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, consensus.NewHCLogger(logger, "snapshots", hclog.Info))
	if err != nil {
		return fmt.Errorf("node: snapshot store: %w", err)
	}
	s.snaps = snaps
	s.hadState, err = raft.HasExistingState(logs.logs, logs.store, snaps)
	if err != nil {
		return fmt.Errorf("node: check raft state: %w", err)
	}
	return nil
}

// openState opens the key-value state, setting aside a corrupt one
// (stateOpener), and measures the disk with the stores' reserves.
func (s *starter) openState(context.Context) error {
	opening := time.Now()
	damaged, err := consensus.CheckSnapshots(filepath.Join(s.cfg.DataDir, "snapshots"))
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	disk := s.n.disk
	s.state = &stateOpener{dataDir: s.cfg.DataDir, id: s.n.id, logs: s.n.logs, snaps: s.snaps,
		opts: storage.Options{Sizing: s.sizing, Guard: disk}, logger: s.n.logger}
	if err := s.state.open(damaged); err != nil {
		return err
	}
	// The replica may replace the state (startReplica): close whichever
	// is open then.
	s.onFail(func() { s.state.kv.Close() })
	// The guard measures what the stores reserve before they close.
	s.onFail(disk.Close)
	// Now with the stores' reserves in the margins: the level the NOSPACE
	// alarm follows from the start.
	disk.Measure()
	s.n.logger.Info("opened and checked the stores", "took", time.Since(opening).Round(time.Millisecond))
	return nil
}

// buildTransport resolves the advertised address and the cluster identity,
// and builds on the port's demux the raft transport, the data groups'
// raft streams (groupStreams) and the peer client (forwarding, read index
// and the other peer calls).
func (s *starter) buildTransport(context.Context) error {
	n, cfg := s.n, s.cfg
	advertise, err := advertiseAddr(cfg.Advertise, s.ln.Addr().(*net.TCPAddr), n.logger)
	if err != nil {
		return err
	}
	s.advertise, n.advertise = advertise, advertise.String()
	ident, err := newIdentity(cfg.DataDir, n.id, n.advertise, n.logger)
	if err != nil {
		return err
	}
	ident.hadState = s.hadState
	n.ident = ident
	if cfg.TLS.Enabled() {
		tc := cfg.TLS
		tc.AutoTLSHosts = append(slices.Clone(tc.AutoTLSHosts), advertise.IP.String())
		if s.tls, err = tlsconf.New(tc, n.logger); err != nil {
			return fmt.Errorf("node: TLS: %w", err)
		}
	}
	n.mux = NewMux(s.ln, n.logger)
	if s.tls != nil {
		n.mux.TLS = s.tls.ServerConfig()
		n.mux.AllowPlaintext = cfg.AllowPlaintextClients
	}
	n.mux.sniffTimeout = cfg.idleTimeout
	n.mux.MaxHTTP, n.mux.MaxPending = cfg.maxHTTP, cfg.maxPending
	n.mux.Handshake = acceptGroupHeader(ident.accept)
	stream := consensus.NewStreamLayer(n.mux.Listener(MuxByteRaft, maxRaftConns), advertise, consensus.DialFunc(ident.dialer(MuxByteRaft, peerDial(s.tls, tlsconf.ALPNRaft, cfg.Dial))))
	// The data groups' raft streams, each group's on n.groups.Listener(id)
	// and n.groups.Dial(id).
	groups := newGroupStreams(n.mux.Listener(MuxByteGroupRaft, maxGroupRaftConns), ident.dialer(MuxByteGroupRaft, peerDial(s.tls, tlsconf.ALPNGroupRaft, cfg.Dial)), n.logger)
	s.onFail(func() { groups.Close() })
	n.groups = groups
	n.addrs = &raftAddrs{self: raft.ServerID(n.id), selfAddr: raft.ServerAddress(n.advertise)}
	trans := newRaftTransport(stream, n.addrs, n.logger)
	s.onFail(func() { trans.Close() })
	n.raftNet = trans
	dialForward := ident.dialer(MuxByteForward, peerDial(s.tls, tlsconf.ALPNForward, cfg.Dial))
	dialPeer := ident.dialer(MuxBytePeer, peerDial(s.tls, tlsconf.ALPNPeer, cfg.Dial))
	n.peers = api.NewPeers(n.id, api.PeerOptions{
		Dial:        api.DialFunc(peerDial(s.tls, tlsconf.ALPNPeer, cfg.Dial)),
		DialForward: func(ctx context.Context, addr string) (net.Conn, error) { return dialForward(ctx, "tcp", addr) },
		ClusterID:   ident.ID,
		DialPeer:    api.DialFunc(dialPeer),
	})
	return nil
}

// startRaft starts the replica (raft over the raft log and the state),
// bootstrapping a one-node cluster when the node is alone and new.
func (s *starter) startRaft(context.Context) error {
	n, cfg := s.n, s.cfg
	ident, peers, addrs := n.ident, n.peers, n.addrs
	s.alone = cfg.BootstrapExpect <= 1 && len(otherSeeds(cfg.Join, n.advertise, s.ln.Addr().String())) == 0
	if s.alone && !s.hadState {
		// A new one-node cluster: its id is on disk before its raft state.
		if err := ident.set(cmp.Or(ident.ID(), newClusterID()), "made for a new one-node cluster"); err != nil {
			return err
		}
	}
	if !cfg.NoMetrics {
		n.metrics = newMetrics()
	}
	met := n.metrics
	n.dataGroups = newGroupHost(n, cfg, s.sizing.ForDataGroup(int64(cfg.Limits.MaxValueBytes)))
	replica, err := s.state.startReplica(consensus.Config{
		ID:                n.id,
		OnTable:           n.dataGroups.setTable,
		Logs:              met.logStore(n.logs.logs),
		Stable:            n.logs.store,
		Snapshots:         s.snaps,
		TempDir:           cfg.DataDir,
		Transport:         n.raftNet,
		Limits:            consensus.Limits{MaxRangePairs: cfg.Limits.MaxRangePairs, MaxRangeBytes: cfg.Limits.MaxRequestBytes},
		Bootstrap:         s.alone,
		HeartbeatTimeout:  cfg.HeartbeatTimeout,
		ElectionTimeout:   cfg.ElectionTimeout,
		SnapshotThreshold: cfg.SnapshotThreshold,
		TrailingLogs:      cfg.TrailingLogs,
		SnapshotInterval:  cfg.SnapshotInterval,
		LeaderReadIndex:   peers.ReadIndex,
		LogStalled:        n.logs.Stalled,
		Retention:         cfg.Retention,
		ClusterID:         ident.ID,
		OnClusterID:       ident.fromLog,
		Disk:              n.disk,
		LeaderAlarm:       peers.Alarm,
		MemberHash: func(ctx context.Context, id, addr string, rev uint64) (storage.StateHash, error) {
			return peers.StateHash(ctx, id, addrs.addrOf(id, addr), rev)
		},
		ConsistencyCheck: consistencyCheck(cfg.ConsistencyCheck),
		QuotaBytes:       quotaBytes(cfg.QuotaBytes),
		FetchState:       peers.FetchState,
		Observer:         met.observer(),
		Logger:           n.logger,
	})
	if err != nil {
		return err
	}
	s.onFail(func() { replica.Shutdown() })
	// Never carry on past a failed write or fsync of the raft log
	// (storage/raftlog's doc.go: failures).
	n.logs.whenFailed(replica.LogFailed)
	n.replica, n.kv = replica, s.state.kv
	n.boot.hasState = replica.HasState
	ident.setRaft(replicaView{replica})
	if ident.ID() == "" && s.hadState && ident.onlyServer() {
		// A one-node cluster from before cluster ids: nobody else has to
		// agree on its id.
		if err := ident.set(newClusterID(), "derived once for a one-node cluster from before cluster ids"); err != nil {
			return err
		}
	}
	replica.StartupNotice()
	addrs.raft.Store(replica.Raft())
	n.dataGroups.setTable(replica.RangeTable())
	s.onFail(func() { n.dataGroups.close() })
	return nil
}

// startGossip joins gossip with the seeds and the peers in the raft
// configuration.
func (s *starter) startGossip(context.Context) error {
	n, cfg := s.n, s.cfg
	// A node that has been in a cluster knows its peers from the raft
	// configuration: gossip with them too, so that a node started without
	// --join (the first of a cluster) finds the others again after a
	// restart without waiting for them to find it.
	seeds := slices.Clone(cfg.Join)
	if f := n.replica.Raft().GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			if a := string(srv.Address); a != n.advertise && !slices.Contains(seeds, a) {
				seeds = append(seeds, a)
			}
		}
	}
	gossipKey, extraKeys := cfg.GossipKey, [][]byte(nil)
	if primary, extra, ok, err := loadKeyring(cfg.DataDir); err != nil {
		return err
	} else if ok {
		if len(cfg.GossipKey) > 0 && !bytes.Equal(cfg.GossipKey, primary) && !slices.ContainsFunc(extra, func(k []byte) bool { return bytes.Equal(k, cfg.GossipKey) }) {
			n.logger.Warn("the gossip key given is not in the data dir's keyring, which a key rotation wrote: gossiping with the keyring's keys", "keyring", filepath.Join(cfg.DataDir, keyringFile), "primary", membership.KeyFingerprint(primary))
		}
		gossipKey, extraKeys = primary, extra
	}
	n.trans = membership.NewTransport(n.mux.Listener(MuxByteGossip, maxGossipConns), n.udp, s.advertise, membership.DialFunc(n.ident.dialer(MuxByteGossip, peerDial(s.tls, tlsconf.ALPNGossip, cfg.Dial))), n.logger)
	s.kick = make(chan struct{}, 1)
	gossip, err := membership.New(membership.Config{
		Meta: membership.Meta{
			ID:              n.id,
			Addr:            n.advertise,
			BootstrapExpect: cfg.BootstrapExpect,
			HasRaftState:    n.replica.HasState(),
			ClusterID:       n.ident.ID(),
		},
		Admit:     n.ident.admitMeta,
		Transport: n.trans,
		Join:      seeds,
		Key:       gossipKey,
		ExtraKeys: extraKeys,
		Fast:      cfg.FastGossip,
		OnPing:    n.metrics.onPing(),
		Logger:    n.logger,
		OnChange: func() {
			n.addrs.changed()
			select {
			case s.kick <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("node: gossip: %w", err)
	}
	n.gossip = gossip
	n.addrs.gossip.Store(gossip)
	return nil
}

// buildAPI builds the servers of the API (HTTP: Connect, gRPC-Web, JSON
// and monitoring; grpc-go; forwarding) and the reconciler.
func (s *starter) buildAPI(context.Context) error {
	n, cfg := s.n, s.cfg
	replica := n.replica
	closing, closed := context.WithCancel(context.Background())
	n.closing = closed
	apiOpts := api.Options{
		Limits:          cfg.Limits,
		DefaultTimeout:  cfg.RequestTimeout,
		BodyReadTimeout: cfg.BodyReadTimeout,
		IdleTimeout:     orDuration(cfg.idleTimeout, DefaultIdleTimeout),
		LeaderWait:      leaderWait(cfg.HeartbeatTimeout, cfg.ElectionTimeout),
		Version:         cfg.Version,
		Logger:          n.logger,
		Peers:           n.peers,
		Leader:          replica.Leader,
		ReadIndexer:     replica,
		StateCopier:     replica,
		Snapshotter:     replica,
		Admin:           admin{n: n},
		Groups:          n.dataGroups,
		ClusterID:       n.ident.ID,
		Metrics:         n.metrics.requestMetrics(),
		Closing:         closing,
		Auth:            replica,
		AuthTokenTTL:    cfg.AuthTokenTTL,
		IsPeer:          isPeer(s.tls),
		// The etcd v3 API on the same port, over the same handlers. Its db
		// size is the state's, as etcd's is its backend's and not its log's.
		GRPCServices: etcd.Options{
			ProgressNotifyInterval: cfg.EtcdProgressNotify,
			DBSize:                 func() int64 { return dirSize(filepath.Join(cfg.DataDir, "kv")) },
		}.Register,
	}
	store := nodeStore{Store: replica, boot: &n.boot}
	var handler http.Handler = api.NewHandler(store, apiOpts)
	n.grpc = api.NewGRPCServer(store, apiOpts)
	n.peerSrv = api.NewPeerGRPCServer(store, apiOpts)
	s.fwd = api.NewForwardServer(replica, apiOpts)
	handler = withMonitoring(handler, n, n.metrics, cfg)
	if cfg.Pprof {
		handler = withPprof(handler)
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	// h2c with prior knowledge: what gRPC clients speak without TLS.
	protocols.SetUnencryptedHTTP2(true)
	n.http = &http.Server{
		Handler:           handler,
		Protocols:         protocols,
		ConnContext:       api.ConnContext,
		ReadHeaderTimeout: orDuration(cfg.readHeaderTimeout, DefaultReadHeaderTimeout),
		IdleTimeout:       orDuration(cfg.idleTimeout, DefaultIdleTimeout),
		MaxHeaderBytes:    MaxHeaderBytes,
		// The same bound on requests in flight per connection as grpc-go's
		// (net/http's own default is 250).
		HTTP2:    &http.HTTP2Config{MaxConcurrentStreams: api.GRPCMaxStreams},
		ErrorLog: slog.NewLogLogger(n.logger.With("component", "http").Handler(), slog.LevelWarn),
	}
	n.http.RegisterOnShutdown(closed)
	idle := &idleConns{since: map[net.Conn]time.Time{}}
	n.http.ConnState = idle.track
	n.mux.EvictIdle = idle.evictOldest
	n.rec = &reconciler{
		raft:          replica.Raft(),
		gossip:        n.gossip,
		self:          n.id,
		maxVoters:     orInt(cfg.MaxVoters, 5),
		deadAfter:     orDuration(cfg.DeadAfter, 30*time.Second),
		caughtUp:      n.caughtUp,
		clusterID:     n.ident.ID,
		deriveID:      n.deriveClusterID,
		logger:        n.logger,
		deadSince:     map[string]time.Time{},
		nonvoterSince: map[string]time.Time{},
		strangers:     map[string]bool{},
	}
	return nil
}

// serve starts serving the port: the demux, and behind it the HTTP,
// grpc-go, forwarding and peer servers. Close waits for them through n.done.
func (s *starter) serve() {
	n := s.n
	n.done = make(chan struct{})
	serveErr := make(chan error, 5)
	grpcL := n.mux.GRPC()
	fwdL := n.mux.Listener(MuxByteForward, maxForwardConns)
	peerL := n.mux.Listener(MuxBytePeer, maxPeerConns)
	go func() { serveErr <- n.mux.Serve() }()
	go func() { serveErr <- n.http.Serve(n.mux.Default()) }()
	go func() { serveErr <- n.grpc.Serve(grpcL) }()
	go func() { serveErr <- s.fwd.Serve(fwdL) }()
	go func() { serveErr <- n.peerSrv.Serve(peerL) }()
	go func() {
		for range 5 {
			if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				n.logger.Error("serving stopped", "error", err)
			}
		}
		close(n.done)
	}()
}

// startLoops starts the node's background loops, which Close stops through
// n.cancel.
func (s *starter) startLoops() {
	n, cfg := s.n, s.cfg
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	if n.metrics != nil {
		n.metrics.registerNode(n, cfg.Version)
		n.goLoop(func() { n.metrics.watchLeader(n.replica.Raft(), ctx.Done()) })
	}
	n.goLoop(func() { n.collectGarbage(ctx) })
	n.goLoop(func() { n.gossip.JoinLoop(ctx) })
	n.goLoop(func() { n.bootstrapLoop(ctx, cfg.BootstrapExpect, s.kick) })
	n.goLoop(func() { n.syncMeta(ctx) })
	n.goLoop(func() { n.rec.run(ctx, s.kick, orDuration(cfg.ReconcileInterval, 5*time.Second)) })
	n.goLoop(func() { n.logReady(ctx) })
	n.goLoop(func() { n.dataGroups.run(ctx) })
}
