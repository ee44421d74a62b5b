package diskspace

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MiB is a mebibyte.
const MiB = 1 << 20

// ErrNoSpace is matched (errors.Is) by every refusal for lack of space.
var ErrNoSpace = errors.New("no space")

// FS is what statfs tells of a filesystem.
type FS struct {
	// Total is the size of the filesystem in bytes.
	Total uint64
	// Avail is how many bytes an unprivileged writer may still use.
	Avail uint64
}

// StatFunc reads the filesystem holding dir.
type StatFunc func(dir string) (FS, error)

// Level is how short of space a node is.
type Level int

const (
	// OK: free space is above the soft margin.
	OK Level = iota
	// Low: below the soft margin: writes that add data are refused.
	Low
	// Critical: below the hard margin: everything that writes is refused.
	Critical
)

func (l Level) String() string {
	switch l {
	case OK:
		return "ok"
	case Low:
		return "low"
	case Critical:
		return "critical"
	}
	return fmt.Sprintf("level(%d)", int(l))
}

// Config configures a Guard.
type Config struct {
	// Dir is the data directory; every file under it counts.
	Dir string
	// Stat reads the filesystem; nil is statfs(2). Tests fake a small or
	// full disk with it.
	Stat StatFunc
	// Slack is the part of the hard margin for small files (markers,
	// manifests, snapshots' metadata); 0 takes 1 MiB.
	Slack uint64
	// Headroom is what the soft margin adds to the hard one; 0 takes
	// DefaultHeadroom of the filesystem's size.
	Headroom uint64
	// Interval is how often free space is measured besides when writes or
	// new files call for it; 0 takes a second.
	Interval time.Duration
	Logger   *slog.Logger
}

// DefaultHeadroom is a sixteenth of the filesystem, between 4 and 64 MiB:
// room for the writes a cluster accepts in the moment between a node's
// crossing its soft margin and every node's hearing of it.
func DefaultHeadroom(total uint64) uint64 {
	return min(max(total/16, 4*MiB), 64*MiB)
}

// Status is one measure of free space against the margins.
type Status struct {
	Dir string
	// Total and Avail are the filesystem's; Promised is what sparse files
	// under Dir may still claim of Avail.
	Total, Avail, Promised uint64
	// Free is Avail less Promised less what was charged since; it is
	// negative when the promises exceed what is available.
	Free int64
	// Hard and Soft are the margins.
	Hard, Soft uint64
	// Level is the level with hysteresis.
	Level Level
	// Err is why the last measure failed, if it did; the level is then
	// the last one known.
	Err error
}

// Margin is the margin of the level: Soft for Low, Hard for Critical.
func (s Status) Margin() uint64 {
	if s.Level == Critical {
		return s.Hard
	}
	return s.Soft
}

// Reason says why the node refuses writes; "" at level OK.
func (s Status) Reason() string {
	switch s.Level {
	case Low:
		return fmt.Sprintf("no space: data dir %s has %s free, below the %s margin", s.Dir, mib(s.Free), mib(int64(s.Soft)))
	case Critical:
		return fmt.Sprintf("no space: data dir %s has %s free, below the %s margin that even deletes and compaction need", s.Dir, mib(s.Free), mib(int64(s.Hard)))
	}
	return ""
}

// mib formats a byte count in whole MiB, rounded down; a negative count
// (promises beyond what is left) is 0.
func mib(n int64) string {
	return fmt.Sprintf("%d MiB", max(n, 0)/MiB)
}

// Error is a refusal for lack of space; it matches ErrNoSpace.
type Error struct {
	Status Status
	// Write is the size of the write refused when it alone would have
	// crossed the margin; 0 otherwise.
	Write int64
}

func (e *Error) Error() string {
	st := e.Status
	if e.Write > 0 && st.Free >= int64(st.Margin()) {
		return fmt.Sprintf("no space: data dir %s has %s free, too little for a write of %s above the %s margin",
			st.Dir, mib(st.Free), mib(max(e.Write, MiB)), mib(int64(st.Margin())))
	}
	return st.Reason()
}

// Is makes errors.Is(err, ErrNoSpace) hold.
func (e *Error) Is(target error) bool { return target == ErrNoSpace }

// Guard watches one data directory's free space. Its methods are safe for
// concurrent use; a nil *Guard allows everything.
type Guard struct {
	cfg    Config
	logger *slog.Logger

	// mu guards the fields below, and serialises measures.
	mu       sync.Mutex
	reserves []func() uint64
	watched  []string
	status   Status
	changed  chan struct{}
	// walkErr is the last walk's error (measure).
	walkErr error

	// charged is what writes accepted since the last measure may take.
	charged atomic.Int64
	// free is status.Free, read without mu by Charge and Allow.
	free atomic.Int64
	// soft and hard are status.Soft and Hard, read without mu.
	soft, hard atomic.Uint64
	level      atomic.Int32

	kick   chan struct{}
	stop   context.CancelFunc
	done   chan struct{}
	notify *notifier // new files in watched directories
}

// New measures dir once and returns its Guard. Run starts measuring in
// the background.
func New(cfg Config) (*Guard, error) {
	if cfg.Stat == nil {
		cfg.Stat = statfs
	}
	if cfg.Slack == 0 {
		cfg.Slack = MiB
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	g := &Guard{
		cfg:     cfg,
		logger:  cfg.Logger.With("component", "diskspace", "dir", cfg.Dir),
		changed: make(chan struct{}),
		kick:    make(chan struct{}, 1),
	}
	if st := g.Measure(); st.Err != nil {
		return nil, fmt.Errorf("disk space of %s: %w", cfg.Dir, st.Err)
	}
	return g, nil
}

// Total is the size of the filesystem at the last measure.
func (g *Guard) Total() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.status.Total
}

// AddReserve adds what f returns, at each measure, to the hard margin: the
// most a store may write without asking.
func (g *Guard) AddReserve(f func() uint64) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.reserves = append(g.reserves, f)
	g.mu.Unlock()
}

// Watch makes the guard reserve the blocks of every file in dir that has
// holes, now, as new files appear, and at every measure.
func (g *Guard) Watch(dir string) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.watched = append(g.watched, filepath.Clean(dir))
	g.mu.Unlock()
	g.fillHoles(dir)
	if g.notify != nil {
		if err := g.notify.add(dir); err != nil {
			g.logger.Warn("cannot watch for new files; they are reserved at the next measure", "watch", dir, "error", err)
		}
	}
}

// Run measures every Interval, and at once when a write or a new file
// calls for it, until Close.
func (g *Guard) Run() {
	if g == nil || g.done != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.stop = cancel
	g.done = make(chan struct{})
	n, err := newNotifier(g.onCreate)
	if err != nil {
		g.logger.Warn("cannot watch for new files; they are reserved at the next measure", "error", err)
	} else {
		g.notify = n
		g.mu.Lock()
		dirs := append([]string(nil), g.watched...)
		g.mu.Unlock()
		for _, d := range dirs {
			if err := n.add(d); err != nil {
				g.logger.Warn("cannot watch for new files; they are reserved at the next measure", "watch", d, "error", err)
			}
		}
	}
	go func() {
		defer close(g.done)
		t := time.NewTicker(g.cfg.Interval)
		defer t.Stop()
		sinceWalk := 0
		for {
			walk := false
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				sinceWalk++
				walk = sinceWalk >= walkEvery || g.charged.Load() != 0
			case <-g.kick:
				walk = true
			}
			if walk {
				sinceWalk = 0
			}
			g.measure(walk)
		}
	}()
}

// walkEvery is how many of Run's intervals in a row may reuse the last
// walk's promised bytes. Sparse files appear through new files (which
// kick a measure) and grow through writes (which Charge first): with
// neither since the last measure, only the filesystem's free space can
// have changed, which statfs tells, while the walk opens and stats every
// file under the data directory. The walk still runs now and then, for
// what no kick tells (files removed, a store's writes of its own).
const walkEvery = 10

// Close stops measuring.
func (g *Guard) Close() {
	if g == nil || g.done == nil {
		return
	}
	g.stop()
	<-g.done
	if g.notify != nil {
		g.notify.close()
	}
}

// Status returns the last measure, with Free less what was charged since.
func (g *Guard) Status() Status {
	if g == nil {
		return Status{}
	}
	g.mu.Lock()
	st := g.status
	g.mu.Unlock()
	st.Free -= g.charged.Load()
	return st
}

// Changed returns a channel closed at the next change of level.
func (g *Guard) Changed() <-chan struct{} {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// Charge counts n bytes that accepted writes are about to take. Free
// space is measured again at once when they take it below a margin.
func (g *Guard) Charge(n int64) {
	if g == nil || n <= 0 {
		return
	}
	charged := g.charged.Add(n)
	free := g.free.Load() - charged
	if (free < int64(g.soft.Load()) && g.level.Load() < int32(Low)) ||
		(free < int64(g.hard.Load()) && g.level.Load() < int32(Critical)) {
		g.kickMeasure()
	}
}

// Allow returns nil when a write of n bytes may go on at level need:
// with need Low, writes that add data are refused from Low on; with need
// Critical, only from Critical on. A write is also refused when it would
// take free space below the level's margin by itself (n is what it may
// take: 0 admits any write while the node is above the margin, and leaves
// the margin's headroom to absorb it). The error matches ErrNoSpace.
func (g *Guard) Allow(need Level, n int64) error {
	if g == nil {
		return nil
	}
	margin := g.soft.Load()
	if need == Critical {
		margin = g.hard.Load()
	}
	free := g.free.Load() - g.charged.Load()
	if Level(g.level.Load()) < need && free-n >= int64(margin) {
		return nil
	}
	st := g.Status()
	if st.Level < need && st.Free < int64(margin) {
		// Below the margin by the charges since the last measure: say
		// so, and measure.
		st.Level = need
		g.kickMeasure()
	}
	e := &Error{Status: st}
	if st.Level < need {
		e.Write = n
		e.Status.Level = need // the margin the write would cross
	}
	return e
}

func (g *Guard) kickMeasure() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// Measure measures free space now and returns the new status.
func (g *Guard) Measure() Status {
	return g.measure(true)
}

// measure is Measure; without walk it takes the last walk's promised
// bytes (and error) instead of filling holes and summing them again.
func (g *Guard) measure(walk bool) Status {
	if g == nil {
		return Status{}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	// Charges from here on are not in this measure's numbers; those
	// before it are. Writes in between count twice, on the safe side.
	charged := g.charged.Load()
	promised, werr := g.status.Promised, g.walkErr
	if walk {
		for _, d := range g.watched {
			g.fillHolesLocked(d)
		}
		promised, werr = promisedBytes(g.cfg.Dir)
		g.walkErr = werr
	}
	fsys, serr := g.cfg.Stat(g.cfg.Dir)
	st := g.status
	st.Dir = g.cfg.Dir
	st.Err = errors.Join(werr, serr)
	if serr != nil {
		g.logger.Warn("cannot measure free space", "error", serr)
		g.status.Err = st.Err
		return st
	}
	var hard uint64 = g.cfg.Slack
	for _, r := range g.reserves {
		hard += r()
	}
	headroom := g.cfg.Headroom
	if headroom == 0 {
		headroom = DefaultHeadroom(fsys.Total)
	}
	st.Total, st.Avail, st.Promised = fsys.Total, fsys.Avail, promised
	st.Free = int64(fsys.Avail) - int64(promised)
	st.Hard, st.Soft = hard, hard+headroom
	st.Level = nextLevel(st.Level, st.Free, hard, st.Soft, headroom/2)
	g.charged.Add(-charged)
	g.free.Store(st.Free)
	g.soft.Store(st.Soft)
	g.hard.Store(st.Hard)
	prev := g.status.Level
	g.status = st
	g.level.Store(int32(st.Level))
	if st.Level != prev {
		close(g.changed)
		g.changed = make(chan struct{})
		if st.Level == OK {
			g.logger.Info("enough free space again: writes accepted", "free_mib", st.Free/MiB, "margin_mib", st.Soft/MiB)
		} else {
			g.logger.Warn(st.Reason(), "level", st.Level.String())
		}
	}
	return st
}

// nextLevel moves from level cur given free space: down as soon as free
// falls below a margin, up only once free is hyst above it.
func nextLevel(cur Level, free int64, hard, soft, hyst uint64) Level {
	switch {
	case free < int64(hard):
		return Critical
	case free < int64(soft):
		if cur == Critical && free < int64(hard+hyst) {
			return Critical
		}
		return Low
	case cur != OK && free < int64(soft+hyst):
		if cur == Critical && free < int64(hard+hyst) {
			return Critical
		}
		return Low
	}
	return OK
}

// promisedBytes sums, over the files under dir, what their apparent sizes
// claim beyond their allocated blocks. Table files (.sst) are skipped:
// Badger writes them whole as it creates them.
func promisedBytes(dir string) (uint64, error) {
	var sum uint64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while we walked
			}
			return err
		}
		if !d.Type().IsRegular() || strings.HasSuffix(d.Name(), ".sst") {
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if size, alloc := info.Size(), allocated(info); size > alloc {
			sum += uint64(size - alloc)
		}
		return nil
	})
	return sum, err
}

// fillHoles reserves the blocks of every file in dir that has holes.
func (g *Guard) fillHoles(dir string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fillHolesLocked(dir)
}

func (g *Guard) fillHolesLocked(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasSuffix(e.Name(), ".sst") {
			continue
		}
		// Only files with holes are opened: Badger's lock file, for one,
		// is better left alone.
		if info, err := e.Info(); err == nil && info.Size() > allocated(info) {
			g.fillFile(filepath.Join(dir, e.Name()))
		}
	}
}

// fillFile reserves the holes of one file, within its current size.
func (g *Guard) fillFile(path string) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return // gone already, or not ours to write
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil || info.Size() <= allocated(info) {
		return
	}
	if err := Reserve(f, info.Size()); err != nil {
		g.logger.Warn("cannot reserve the space a file may take; it is counted as promised", "file", path, "bytes", info.Size(), "error", err)
	}
}

// onCreate is called by the notifier for a new file in a watched
// directory: reserve it, then measure.
func (g *Guard) onCreate(path string) {
	if strings.HasSuffix(path, ".sst") {
		return
	}
	// Badger creates the file, then sets its size: wait briefly for that.
	for range 50 {
		info, err := os.Stat(path)
		if err != nil {
			return
		}
		if info.Size() > 0 {
			break
		}
		time.Sleep(100 * time.Microsecond)
	}
	g.fillFile(path)
	g.kickMeasure()
}
