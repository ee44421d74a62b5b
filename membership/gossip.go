package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Config configures a Gossip.
type Config struct {
	// Meta is what this node tells the others; Meta.ID is the memberlist
	// node name and cannot change later.
	Meta Meta
	// Transport carries gossip over the shared port. Required. The Gossip
	// owns it from New on: Shutdown (and a failed New) shut it down.
	Transport *Transport
	// Join lists seeds: host:port, or a host name that may resolve to
	// several addresses (all are tried). A seed without a port uses this
	// node's port, since every node normally uses the same one. Seeds that
	// are this node itself are skipped.
	Join []string
	// Key, if set, encrypts and authenticates gossip (16, 24 or 32 bytes,
	// see ParseKey); nodes without the same key cannot join.
	Key []byte
	// ExtraKeys are more keys gossip is decrypted with (a keyring in
	// rotation); Key encrypts. Ignored without Key.
	ExtraKeys [][]byte
	// Fast selects loopback/test timing: a dead node is detected within
	// about 1-2 s. Otherwise LAN timing is used (about 5 s for a small
	// cluster).
	Fast bool
	// Logger receives gossip and memberlist logs; nil discards them.
	Logger *slog.Logger
	// Admit, if set, decides whether this node gossips with a node, from
	// its meta: an error refuses it (memberlist then ignores what it says
	// about itself, and a join through nodes that are all refused fails).
	// It must not block: memberlist calls it with its locks held. Errors
	// that implement OtherCluster() bool (returning true) mean the node
	// belongs to another cluster: the caller reports those itself, and
	// JoinLoop then retries quietly.
	Admit func(Meta) error
	// OnChange is called whenever the member list or any member's meta or
	// state changes. Calls come from one goroutine, never while a lock of
	// this package or memberlist is held; changes that happen while it runs
	// are coalesced into one more call. It must not call Shutdown.
	OnChange func()
	// OnPing, if set, hears the round-trip time of every probe a member
	// answered (memberlist probes one member at a time, every probe
	// interval). It must not block: memberlist calls it from its probe.
	OnPing func(id string, rtt time.Duration)
}

// timing holds the knobs that differ between Fast and LAN mode, besides
// memberlist's own.
type timing struct {
	joinMin, joinMax  time.Duration // JoinLoop backoff bounds
	warnEvery         time.Duration // repeat an unchanged id conflict at most this often
	reconnectInterval time.Duration // how often to retry one failed member
	reconnectTimeout  time.Duration // stop retrying a failed member after this
	forgetAfter       time.Duration // memberlist's GossipToTheDeadTime: dead/left records vanish then
	opTimeout         time.Duration // default bound for SetMeta/Leave broadcasts
}

// memberlistConfig returns memberlist's configuration and our timing for
// the chosen mode.
func memberlistConfig(fast bool) (*memberlist.Config, timing) {
	if fast {
		c := memberlist.DefaultLocalConfig()
		// Failure detection: every node is probed within
		// n*ProbeInterval; a failed probe makes it suspect, and with
		// fewer than 10 nodes the suspicion lasts SuspicionMult *
		// ProbeInterval (600 ms) once another node confirms, at most
		// SuspicionMaxTimeoutMult times that (1.2 s) without. A crash in
		// a 3-node cluster is thus declared within about 1.5-2 s.
		c.ProbeInterval = 200 * time.Millisecond
		c.ProbeTimeout = 100 * time.Millisecond
		c.SuspicionMult = 3
		c.SuspicionMaxTimeoutMult = 2
		// Spread news fast; loopback bandwidth is free.
		c.GossipInterval = 50 * time.Millisecond
		c.RetransmitMult = 3
		c.PushPullInterval = 2 * time.Second
		c.TCPTimeout = time.Second
		// A node restarted on a new address with its old id is accepted
		// once the old address has been dead this long. It must be
		// shorter than GossipToTheDeadTime, or the record is simply
		// forgotten first (and not necessarily by every node at once).
		c.DeadNodeReclaimTime = 2 * time.Second
		c.GossipToTheDeadTime = 10 * time.Second
		return c, timing{
			joinMin:           50 * time.Millisecond,
			joinMax:           time.Second,
			warnEvery:         5 * time.Second,
			reconnectInterval: 500 * time.Millisecond,
			reconnectTimeout:  time.Minute,
			forgetAfter:       c.GossipToTheDeadTime,
			opTimeout:         2 * time.Second,
		}
	}
	c := memberlist.DefaultLANConfig()
	// See above; memberlist's LAN default of 0 would never let a node
	// that moved to a new address back in under its old id.
	c.DeadNodeReclaimTime = 20 * time.Second // < GossipToTheDeadTime (30 s)
	return c, timing{
		joinMin:           200 * time.Millisecond,
		joinMax:           10 * time.Second,
		warnEvery:         30 * time.Second,
		reconnectInterval: 10 * time.Second,
		reconnectTimeout:  24 * time.Hour, // as serf: partitions can be long
		forgetAfter:       c.GossipToTheDeadTime,
		opTimeout:         10 * time.Second,
	}
}

// Gossip is this node's membership in the cluster, over hashicorp/memberlist.
//
// memberlist v0.7.0 does not expose a member's state (its Node.State is
// never filled in, Members lists only live nodes, and suspicion raises no
// event), so Gossip keeps its own member table, fed by memberlist's event,
// ping and conflict delegates.
type Gossip struct {
	id        string
	logger    *slog.Logger
	transport *Transport
	ml        *memberlist.Memberlist
	keyring   *memberlist.Keyring // nil: gossip is not encrypted
	seeds     []string
	timing    timing
	reclaim   time.Duration
	advertise netip.AddrPort
	localIPs  map[netip.Addr]bool
	onChange  func()
	admit     func(Meta) error
	onPing    func(id string, rtt time.Duration)

	mu      sync.Mutex
	meta    Meta
	metaBuf []byte
	members map[string]*Member
	metaErr map[string]string // last meta decode error logged per member

	// selfConflicts counts conflicts where another live node claims our
	// id; JoinLoop treats a join that caused one as failed.
	selfConflicts atomic.Uint64
	conflictLog   *logLimiter
	// otherCluster counts joins refused because every node of the pool
	// joined belongs to another cluster (Config.Admit).
	otherCluster atomic.Uint64
	// refusals holds the texts of recent refusals by Config.Admit.
	refusalMu sync.Mutex
	refusals  map[string]struct{}

	changeCh chan struct{}
	done     chan struct{}
	wg       sync.WaitGroup

	// opMu serialises Leave and Shutdown: memberlist.Leave panics after
	// memberlist.Shutdown.
	opMu         sync.Mutex
	shutdown     bool
	left         atomic.Bool
	shutdownErr  error
	shutdownOnce sync.Once
}

// New creates the memberlist and starts answering gossip; it does not join
// anyone (see JoinLoop). On error the transport has been shut down.
func New(cfg Config) (g *Gossip, err error) {
	if cfg.Transport == nil {
		return nil, errors.New("gossip: Config.Transport is required")
	}
	defer func() {
		if err != nil {
			cfg.Transport.Shutdown()
		}
	}()
	if err := validateID(cfg.Meta.ID); err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	metaBuf, err := encodeMeta(cfg.Meta)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	if len(cfg.Key) > 0 {
		for _, k := range append([][]byte{cfg.Key}, cfg.ExtraKeys...) {
			if err := ValidateKey(k); err != nil {
				return nil, fmt.Errorf("gossip: %w", err)
			}
		}
	}
	advIP, advPort, err := cfg.Transport.FinalAdvertiseAddr("", 0)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	advAddr, _ := netip.AddrFromSlice(advIP)
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	mlConf, tm := memberlistConfig(cfg.Fast)
	// memberlist's LZW costs a fresh 64 KiB table per packet, to shrink
	// pings and acks of tens of bytes, at rest too. A node takes
	// compressed and plain messages alike, so mixed versions interoperate.
	mlConf.EnableCompression = false
	g = &Gossip{
		id:          cfg.Meta.ID,
		logger:      logger,
		transport:   cfg.Transport,
		seeds:       slices.Clone(cfg.Join),
		timing:      tm,
		reclaim:     mlConf.DeadNodeReclaimTime,
		advertise:   netip.AddrPortFrom(advAddr.Unmap(), uint16(advPort)),
		localIPs:    localIPs(),
		onChange:    cfg.OnChange,
		admit:       cfg.Admit,
		onPing:      cfg.OnPing,
		refusals:    make(map[string]struct{}),
		meta:        cfg.Meta,
		metaBuf:     metaBuf,
		members:     make(map[string]*Member),
		metaErr:     make(map[string]string),
		conflictLog: newLogLimiter(tm.warnEvery),
		changeCh:    make(chan struct{}, 1),
		done:        make(chan struct{}),
	}

	d := &delegate{g: g}
	mlConf.Name = cfg.Meta.ID
	mlConf.Transport = cfg.Transport
	mlConf.AdvertiseAddr = advIP.String()
	mlConf.AdvertisePort = advPort
	// BindPort is only used by memberlist as the default port of a join
	// address without one; JoinLoop always passes ip:port.
	mlConf.BindPort = advPort
	mlConf.Delegate = d
	mlConf.Events = d
	mlConf.Conflict = d
	mlConf.Ping = d
	if cfg.Admit != nil {
		mlConf.Alive = d
		mlConf.Merge = d
	}
	mlConf.Logger = newMemberlistLogger(logger, g.noteMemberlistLine)
	if len(cfg.Key) > 0 {
		kr, err := memberlist.NewKeyring(cloneKeys(cfg.ExtraKeys), slices.Clone(cfg.Key))
		if err != nil {
			return nil, fmt.Errorf("gossip: keyring: %w", err)
		}
		mlConf.Keyring = kr
		g.keyring = kr
		// Refuse unencrypted gossip both ways (also memberlist's
		// default, but the guarantee must not hinge on a default).
		mlConf.GossipVerifyIncoming = true
		mlConf.GossipVerifyOutgoing = true
	}

	// Create announces us to ourselves, which already runs the delegates:
	// everything they touch is set up above.
	ml, err := memberlist.Create(mlConf)
	if err != nil {
		return nil, fmt.Errorf("gossip: create memberlist: %w", err)
	}
	g.ml = ml

	g.wg.Add(2)
	go g.notifyLoop()
	go g.reconnectLoop()
	logger.Info("gossip: started", "id", g.id, "addr", g.advertise.String(),
		"encrypted", len(cfg.Key) > 0, "fast", cfg.Fast, "seeds", g.seeds)
	return g, nil
}

// localIPs lists this host's interface addresses, to recognise seeds that
// are this node. Errors only make self-detection less thorough.
func localIPs() map[netip.Addr]bool {
	ips := make(map[netip.Addr]bool)
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			ips[p.Addr().Unmap()] = true
		}
	}
	return ips
}

// ID returns this node's id.
func (g *Gossip) ID() string { return g.id }

// Members returns every member memberlist still remembers, including dead
// and left ones (memberlist forgets those GossipToTheDeadTime after they
// failed: 30 s on LAN timing, 10 s with Fast), and this node, sorted by ID.
func (g *Gossip) Members() []Member {
	now := time.Now()
	g.mu.Lock()
	out := make([]Member, 0, len(g.members))
	for _, m := range g.members {
		if g.forgotten(m, now) {
			continue
		}
		out = append(out, *m)
	}
	g.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// forgotten reports whether memberlist has (approximately) dropped m.
func (g *Gossip) forgotten(m *Member, now time.Time) bool {
	return m.ID != g.id && (m.State == StateDead || m.State == StateLeft) &&
		now.Sub(m.Since) > g.timing.forgetAfter
}

// Local returns this node as the cluster sees it.
func (g *Gossip) Local() Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	if m, ok := g.members[g.id]; ok {
		return *m
	}
	// Unreachable after New (memberlist announces us to ourselves during
	// Create), but a zero Member would be worse than this.
	return Member{ID: g.id, Addr: g.advertise.String(), State: StateAlive, Meta: g.meta}
}

// SetMeta replaces this node's metadata and gossips it (memberlist's
// UpdateNode). The id cannot change, and after Leave, Leaving stays set. ctx bounds the wait for the broadcast
// (its deadline, capped at 2 s with Fast timing, 10 s otherwise); if the
// broadcast is not confirmed in time the local meta is still updated and
// push/pull sync will spread it, but an error says so.
func (g *Gossip) SetMeta(ctx context.Context, m Meta) error {
	if m.ID != g.id {
		return fmt.Errorf("gossip: SetMeta cannot change the node id from %q to %q", g.id, m.ID)
	}
	g.opMu.Lock()
	defer g.opMu.Unlock()
	if g.shutdown {
		return errors.New("gossip: SetMeta after Shutdown")
	}
	if g.left.Load() {
		// Clearing it would make the others record a crash when we go.
		m.Leaving = true
	}
	buf, err := encodeMeta(m)
	if err != nil {
		return fmt.Errorf("gossip: %w", err)
	}
	return g.setMetaLocked(ctx, m, buf)
}

func (g *Gossip) setMetaLocked(ctx context.Context, m Meta, buf []byte) error {
	timeout, err := g.opTimeout(ctx)
	if err != nil {
		return fmt.Errorf("gossip: set meta: %w", err)
	}
	g.mu.Lock()
	g.meta, g.metaBuf = m, buf
	g.mu.Unlock()
	if err := g.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("gossip: meta updated locally, but its broadcast was not confirmed within %s: %w", timeout, err)
	}
	return nil
}

// opTimeout turns ctx into the timeout memberlist's blocking calls take.
// memberlist cannot be cancelled mid-call, so a deadline-less ctx gets the
// default bound; a timeout of 0 would mean "forever" to memberlist.
func (g *Gossip) opTimeout(ctx context.Context) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	timeout := g.timing.opTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	if timeout <= 0 {
		return 0, context.DeadlineExceeded
	}
	return timeout, nil
}

// Leave leaves the cluster gracefully: it sets Leaving in our meta and
// gossips it first, so the others record StateLeft rather than StateDead
// (memberlist's own leave event cannot tell the two apart), then broadcasts
// memberlist's leave. Gossip keeps running until Shutdown. ctx bounds each
// of the two broadcasts as in SetMeta.
func (g *Gossip) Leave(ctx context.Context) error {
	g.opMu.Lock()
	defer g.opMu.Unlock()
	if g.shutdown {
		return errors.New("gossip: Leave after Shutdown")
	}
	g.mu.Lock()
	m := g.meta
	g.mu.Unlock()
	m.Leaving = true
	buf, err := encodeMeta(m)
	if err != nil {
		return fmt.Errorf("gossip: leave: %w", err)
	}
	var errs []error
	if err := g.setMetaLocked(ctx, m, buf); err != nil {
		// Leave anyway: a node that wants out must get out. The others
		// may record a crash instead of a leave.
		g.logger.Warn("gossip: leave announcement not confirmed; leaving anyway", "err", err)
		errs = append(errs, err)
	}
	timeout, err := g.opTimeout(ctx)
	if err != nil {
		// The caller's deadline is spent, but skipping memberlist's
		// leave would look like a crash to the others: give it a moment.
		timeout = g.timing.opTimeout / 4
	}
	g.left.Store(true)
	if err := g.ml.Leave(timeout); err != nil {
		errs = append(errs, fmt.Errorf("gossip: leave: %w", err))
	} else {
		g.logger.Info("gossip: left the cluster", "id", g.id)
	}
	return errors.Join(errs...)
}

// Shutdown stops gossip at once (without Leave, the others will see this
// node die) and shuts the transport down. It waits for a running OnChange
// to return. It is idempotent; every call returns the first call's result.
func (g *Gossip) Shutdown() error {
	g.shutdownOnce.Do(func() {
		g.opMu.Lock()
		g.shutdown = true
		g.opMu.Unlock()
		close(g.done)
		var errs []error
		if err := g.ml.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("gossip: shutdown memberlist: %w", err))
		}
		// memberlist already shut the transport down; this is a no-op
		// then, but keeps the guarantee independent of memberlist.
		if err := g.transport.Shutdown(); err != nil {
			errs = append(errs, err)
		}
		g.wg.Wait()
		g.shutdownErr = errors.Join(errs...)
		g.logger.Info("gossip: stopped", "id", g.id)
	})
	return g.shutdownErr
}

func (g *Gossip) isShutdown() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

// changed schedules an OnChange call without blocking: memberlist calls
// our delegates with its node lock held.
func (g *Gossip) changed() {
	select {
	case g.changeCh <- struct{}{}:
	default: // a call is already pending; it will see this change too
	}
}

func (g *Gossip) notifyLoop() {
	defer g.wg.Done()
	for {
		select {
		case <-g.done:
			return
		case <-g.changeCh:
			if g.onChange != nil {
				g.onChange()
			}
		}
	}
}

// JoinLoop tries the seeds until one answers, forever, with exponential
// backoff and jitter (200 ms to 10 s; 50 ms to 1 s with Fast), re-resolving
// host names on every try, and logs each failed try. It returns when joined
// or when ctx is done. A node whose
// seeds are all itself returns at once: it is the first node, and the
// others will join it. It also returns once other members have joined us,
// since we are then part of a cluster anyway.
//
// A join that shows another live node already holding our id does not
// count: JoinLoop logs the conflict and keeps trying (the cluster refuses
// us until the other node is gone).
//
// Each memberlist join attempt is bounded by its TCP timeout rather than
// ctx, so JoinLoop may return up to that long (1 s Fast, 10 s LAN) after
// ctx is done.
func (g *Gossip) JoinLoop(ctx context.Context) {
	if len(g.seeds) == 0 {
		g.logger.Info("gossip: no seeds; waiting for others to join us", "id", g.id)
		return
	}
	startConflicts := g.selfConflicts.Load()
	refusals := func() uint64 { return g.otherCluster.Load() + g.transport.otherCluster.Load() }
	backoff := g.timing.joinMin
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil || g.isShutdown() {
			return
		}
		addrs, errs := g.resolveSeeds(ctx)
		if len(addrs) == 0 && len(errs) == 0 {
			g.logger.Info("gossip: every seed is this node; waiting for others to join us", "id", g.id, "seeds", g.seeds)
			return
		}
		if g.ml.NumMembers() > 1 && g.selfConflicts.Load() == startConflicts {
			g.logger.Info("gossip: joined: other members contacted us", "id", g.id, "members", g.ml.NumMembers())
			return
		}
		refusedBefore := refusals()
		via, joinErrs := g.tryJoin(ctx, addrs)
		if via != "" {
			g.logger.Info("gossip: joined the cluster", "id", g.id, "via", via, "attempts", attempt, "members", g.ml.NumMembers())
			return
		}
		if ctx.Err() != nil || g.isShutdown() {
			return
		}
		errs = append(errs, joinErrs...)
		reason := errors.Join(errs...).Error()
		reason = strings.ReplaceAll(reason, "\n", "; ")
		delay := backoff/2 + rand.N(backoff/2+1)
		attrs := []any{"id", g.id, "attempt", attempt, "seeds", g.seeds, "err", reason, "retry_in", delay.Round(time.Millisecond)}
		if hint := joinHint(reason); hint != "" {
			attrs = append(attrs, "hint", hint)
		}
		// Every retry says so: the backoff keeps the lines few (about
		// one every joinMax once it has grown), and an operator waiting
		// for seeds sees each attempt and its cause. Seeds of another
		// cluster will not change their mind: when every seed refused us
		// so, that was reported once where it was found (Config.Admit, the
		// dialer), and the node only waits at the longest backoff in case
		// other seeds come up.
		if len(addrs) > 0 && refusals()-refusedBefore >= uint64(len(addrs)) {
			g.logger.Debug("gossip: the seeds belong to another cluster; retrying", attrs...)
			backoff = g.timing.joinMax
		} else {
			g.logger.Warn("gossip: cannot join the cluster yet; retrying", attrs...)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-g.done:
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, g.timing.joinMax)
	}
}

// joinHint explains the join errors operators most often misread.
func joinHint(reason string) string {
	r := strings.ToLower(reason)
	switch {
	case strings.Contains(r, "encrypt") || strings.Contains(r, "decrypt") || strings.Contains(r, "keyring"):
		return "gossip encryption mismatch: every node needs the same gossip key (or none)"
	case strings.Contains(r, "is held by another live node"):
		return "node ids must be unique: use a different --name or data dir, or stop the other node"
	default:
		return ""
	}
}

// tryJoin joins through every address that answers and returns the
// first of them. Through all, not just one: seeds that answer from
// separate pools (nodes started together through one DNS name may have
// formed islands) are merged by it.
func (g *Gossip) tryJoin(ctx context.Context, addrs []string) (string, []error) {
	var errs []error
	via := ""
	for _, addr := range addrs {
		if ctx.Err() != nil || g.isShutdown() {
			break
		}
		before := g.selfConflicts.Load()
		n, err := g.ml.Join([]string{addr})
		if err != nil || n == 0 {
			errs = append(errs, joinError(addr, err))
			continue
		}
		if g.selfConflicts.Load() != before {
			errs = append(errs, fmt.Errorf("%s: our node id %q is held by another live node", addr, g.id))
			continue
		}
		if via == "" {
			via = addr
		}
	}
	if via != "" {
		return via, nil
	}
	return "", errs
}

// joinError unwraps memberlist's single-entry multierror, whose text spans
// lines, into one line.
func joinError(addr string, err error) error {
	if err == nil {
		return fmt.Errorf("%s: no node answered", addr)
	}
	var me interface{ WrappedErrors() []error }
	if errors.As(err, &me) && len(me.WrappedErrors()) == 1 {
		err = me.WrappedErrors()[0]
	}
	// memberlist already says "failed to join <addr>: ..."
	return err
}

// resolveSeeds turns the seeds into ip:port candidates, without this node.
// Names are resolved afresh on every call: in dynamic environments (DNS,
// Kubernetes headless services) the answers change while we wait.
func (g *Gossip) resolveSeeds(ctx context.Context) ([]string, []error) {
	var out []string
	var errs []error
	seen := make(map[netip.AddrPort]bool)
	for _, seed := range g.seeds {
		host, port, err := splitSeed(seed, g.advertise.Port())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ips, err = net.DefaultResolver.LookupNetIP(rctx, "ip", host)
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("resolve seed %q: %w", seed, err))
				continue
			}
		}
		for _, ip := range ips {
			ap := netip.AddrPortFrom(ip.Unmap(), port)
			if seen[ap] || g.isSelf(ap) {
				continue
			}
			seen[ap] = true
			out = append(out, ap.String())
		}
	}
	return out, errs
}

// splitSeed parses "host:port", "[v6]:port" or a bare host (our port).
func splitSeed(seed string, defPort uint16) (string, uint16, error) {
	host, portStr, err := net.SplitHostPort(seed)
	if err != nil {
		// A bare host, or a bare IPv6 address.
		host, portStr = strings.Trim(seed, "[]"), ""
	}
	if host == "" {
		return "", 0, fmt.Errorf("seed %q: no host", seed)
	}
	if portStr == "" {
		return host, defPort, nil
	}
	p, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("seed %q: bad port %q", seed, portStr)
	}
	return host, uint16(p), nil
}

// isSelf reports whether ap reaches this node: our port on our advertised
// address, on loopback, or on one of this host's addresses.
func (g *Gossip) isSelf(ap netip.AddrPort) bool {
	if ap.Port() != g.advertise.Port() {
		return false
	}
	ip := ap.Addr()
	return ip == g.advertise.Addr() || ip.IsLoopback() || ip.IsUnspecified() || g.localIPs[ip]
}

// reconnectLoop periodically re-joins one member that failed (not one that
// left). memberlist alone never heals a partition in which both sides
// declared each other dead: it probes and pushes only to live nodes, so
// this is how the sides find each other again (serf does the same).
func (g *Gossip) reconnectLoop() {
	defer g.wg.Done()
	t := time.NewTicker(g.timing.reconnectInterval)
	defer t.Stop()
	for {
		select {
		case <-g.done:
			return
		case <-t.C:
		}
		if g.left.Load() {
			continue
		}
		m, ok := g.pickFailed()
		if !ok {
			continue
		}
		if _, err := g.ml.Join([]string{m.Addr}); err != nil {
			g.logger.Debug("gossip: reconnect to failed member failed", "member", m.ID, "addr", m.Addr, "err", joinError(m.Addr, err))
		} else {
			g.logger.Debug("gossip: reconnected to failed member", "member", m.ID, "addr", m.Addr)
		}
	}
}

// pickFailed returns a random dead member worth reconnecting to, and drops
// records of members that failed or left too long ago.
func (g *Gossip) pickFailed() (Member, bool) {
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	var failed []*Member
	for id, m := range g.members {
		switch {
		case id == g.id:
		case m.State == StateLeft && now.Sub(m.Since) > g.timing.forgetAfter,
			m.State == StateDead && now.Sub(m.Since) > g.timing.reconnectTimeout:
			delete(g.members, id)
			delete(g.metaErr, id)
		case m.State == StateDead:
			failed = append(failed, m)
		}
	}
	if len(failed) == 0 {
		return Member{}, false
	}
	return *failed[rand.N(len(failed))], true
}
