// Package bench is a load generator for key-value stores: it runs a
// workload (puts, gets, a read/write mix, compare-and-swaps or ranges) from
// many concurrent request loops against a Target, closed loop or at a fixed
// rate, and reports throughput, errors and the latency distribution.
//
// The workloads only know the Target interface, so the same numbers can be
// taken from kvstore (KVStore, DialKVStore) and from other stores.
package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Workload names.
const (
	WorkloadPut   = "put"   // Put of a random key
	WorkloadGet   = "get"   // Get of a random key
	WorkloadMixed = "mixed" // Get with probability ReadRatio, else Put
	WorkloadTxn   = "txn"   // Get of a random key, then CAS from the value read
	WorkloadRange = "range" // Range of RangeLimit keys from a random key
)

// Workloads lists the workload names.
var Workloads = []string{WorkloadPut, WorkloadGet, WorkloadMixed, WorkloadTxn, WorkloadRange}

// Config describes one run.
type Config struct {
	// Workload is one of Workloads.
	Workload string
	// Clients is the number of concurrent request loops; default 16.
	Clients int
	// Total stops the run after that many requests (0: no limit).
	Total int64
	// Duration stops the run after that long (0: no limit). At least one
	// of Total and Duration must be set.
	Duration time.Duration
	// Rate, when > 0, sends Rate requests per second in all (open loop):
	// request k is due at start + k/Rate and its latency is measured from
	// then, not from when a loop got free to send it, so that a slow
	// server is not hidden (coordinated omission). With 0, each loop sends
	// its next request as soon as the previous one is answered (closed
	// loop).
	Rate float64
	// KeySize, ValueSize and Keyspace shape the data: keys are the
	// Keyspace numbers 0..Keyspace-1 in decimal, zero-padded to KeySize
	// bytes, so they sort in numeric order. Defaults 16, 256, 100000.
	KeySize, ValueSize, Keyspace int
	// Prefixes, when set, spread the keys over key ranges: key number i
	// is Prefixes[i%len(Prefixes)] followed by its KeySize digits, so
	// each prefix gets an equal share of the keyspace and of the requests
	// (a range stays under the prefix of its first key). Each prefix must
	// be non-empty and given once.
	Prefixes []string
	// ReadRatio is the share of gets in the mixed workload, 0 to 1 (0:
	// puts only).
	ReadRatio float64
	// Serializable makes reads serializable instead of linearizable.
	Serializable bool
	// RangeLimit is the number of keys a range reads; default 10.
	RangeLimit int64
	// RequestTimeout bounds each request; 0 for none.
	RequestTimeout time.Duration
	// ErrorCode names the kind of an error in Result.Errors; default
	// ConnectCode.
	ErrorCode func(error) string
	// Progress, when set, is called about every ProgressInterval (default
	// 1s) from a goroutine of its own with the counts so far.
	Progress         func(Progress)
	ProgressInterval time.Duration
	// Seed seeds the key choice; runs with the same seed and Clients pick
	// the same keys in each loop.
	Seed uint64
}

// Progress is a snapshot of a run.
type Progress struct {
	Elapsed time.Duration
	Ops     int64 // requests answered without error
	Errors  int64
}

// Result is the outcome of a run. Latencies are of successful requests
// only (for txn: the read and the CAS together).
type Result struct {
	Workload string  `json:"workload"`
	Clients  int     `json:"clients"`
	Rate     float64 `json:"rate,omitempty"`
	// Ops counts the requests answered without error; Errors counts the
	// others by ErrorCode. Requests cut short by the end of the context
	// are in neither.
	Ops    int64            `json:"ops"`
	Errors map[string]int64 `json:"errors"`
	// Misses counts reads that found no key (counted in Ops too).
	Misses int64 `json:"misses,omitempty"`
	// CASFailed counts compare-and-swaps whose compare did not hold
	// (counted in Ops too): another loop changed the key in between.
	CASFailed int64 `json:"cas_failed,omitempty"`
	// Dropped counts, in an open-loop run, the requests due before the end
	// of Duration that were not sent by a grace period after it (a tenth
	// of Duration, at most 1s) because every loop was busy: the
	// target did not keep up with Rate (add clients or lower the rate).
	Dropped int64 `json:"dropped,omitempty"`
	// Interrupted tells that the context ended the run early.
	Interrupted bool `json:"interrupted,omitempty"`

	DurationS float64 `json:"duration_s"`
	OpsPerS   float64 `json:"ops_per_s"`
	MeanMs    float64 `json:"mean_ms"`
	MinMs     float64 `json:"min_ms"`
	P50Ms     float64 `json:"p50_ms"`
	P90Ms     float64 `json:"p90_ms"`
	P99Ms     float64 `json:"p99_ms"`
	P999Ms    float64 `json:"p999_ms"`
	MaxMs     float64 `json:"max_ms"`

	Duration time.Duration `json:"-"`
	Hist     *Histogram    `json:"-"`
}

// ErrorCount returns the number of failed requests.
func (r *Result) ErrorCount() int64 {
	var n int64
	for _, c := range r.Errors {
		n += c
	}
	return n
}

func (c *Config) setDefaults() error {
	if c.Clients <= 0 {
		c.Clients = 16
	}
	if c.KeySize <= 0 {
		c.KeySize = 16
	}
	if c.ValueSize < 0 {
		return fmt.Errorf("bench: value size %d is negative", c.ValueSize)
	}
	if c.Keyspace <= 0 {
		c.Keyspace = 100000
	}
	if c.ReadRatio < 0 || c.ReadRatio > 1 {
		return fmt.Errorf("bench: read ratio %v is not in [0, 1]", c.ReadRatio)
	}
	if c.RangeLimit <= 0 {
		c.RangeLimit = 10
	}
	if c.ErrorCode == nil {
		c.ErrorCode = ConnectCode
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = time.Second
	}
	if c.Total < 0 || c.Duration < 0 || c.Rate < 0 {
		return errors.New("bench: total, duration and rate must not be negative")
	}
	if c.Total == 0 && c.Duration == 0 {
		return errors.New("bench: set a total or a duration")
	}
	if n := len(strconv.Itoa(c.Keyspace - 1)); n > c.KeySize {
		return fmt.Errorf("bench: key size %d is too small for a keyspace of %d keys (need %d)", c.KeySize, c.Keyspace, n)
	}
	seen := map[string]bool{}
	for _, p := range c.Prefixes {
		if p == "" || seen[p] {
			return fmt.Errorf("bench: prefixes %q: each must be non-empty and given once", c.Prefixes)
		}
		seen[p] = true
	}
	switch c.Workload {
	case WorkloadPut, WorkloadGet, WorkloadMixed, WorkloadTxn, WorkloadRange:
	default:
		return fmt.Errorf("bench: unknown workload %q (want one of %v)", c.Workload, Workloads)
	}
	return nil
}

// Key writes key number i of a keyspace into buf, which has the key size:
// i in decimal, zero-padded on the left.
func Key(buf []byte, i int) {
	for j := len(buf) - 1; j >= 0; j-- {
		buf[j] = byte('0' + i%10)
		i /= 10
	}
}

// keyer makes the keys of a Config, reusing one buffer per prefix.
type keyer struct {
	bufs   [][]byte // per prefix: the prefix, then KeySize digits
	plen   []int    // per prefix: its length
	digits int
}

func newKeyer(c *Config) *keyer {
	prefixes := c.Prefixes
	if len(prefixes) == 0 {
		prefixes = []string{""}
	}
	k := &keyer{digits: c.KeySize}
	for _, p := range prefixes {
		k.bufs = append(k.bufs, append([]byte(p), make([]byte, c.KeySize)...))
		k.plen = append(k.plen, len(p))
	}
	return k
}

// key returns key number i. The slice is valid until the next call for a
// key of the same prefix.
func (k *keyer) key(i int) []byte {
	return k.at(i%len(k.bufs), i)
}

// at returns the key made of prefix number p and the digits of i.
func (k *keyer) at(p, i int) []byte {
	b := k.bufs[p]
	Key(b[k.plen[p]:], i)
	return b
}

// rangeEnd returns the end of a range of limit keys from key number i,
// within i's prefix: the key limit places further under that prefix, or,
// past the keyspace's last one, the end of the prefix ("\x00", every key
// from the start, without a prefix).
func (k *keyer) rangeEnd(i int, limit int64, keyspace int) []byte {
	n := len(k.bufs)
	p := i % n
	if j := i + int(limit)*n; j < keyspace {
		return k.at(p, j)
	}
	prefix := k.bufs[p][:k.plen[p]]
	if len(prefix) == 0 {
		return []byte{0}
	}
	return prefixEnd(prefix)
}

// prefixEnd returns the smallest key greater than every key starting with
// prefix, or "\x00" (to the end of the keyspace) if there is none.
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

// worker is the state of one request loop.
type worker struct {
	hist   *Histogram
	errs   map[string]int64
	misses int64
	casNo  int64
	sent   int64
	ops    atomic.Int64 // read by the progress goroutine
	nerr   atomic.Int64
	_      [64]byte // keep hot counters of loops apart
}

// Run runs cfg against targets, giving request loop i targets[i %
// len(targets)]. It returns when Total requests are answered, Duration has
// passed or ctx ends; in the last case the Result is marked Interrupted and
// requests cut short are not counted. Run fails only on a bad Config.
func Run(ctx context.Context, cfg Config, targets []Target) (*Result, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		return nil, errors.New("bench: no targets")
	}

	// stop ends the sending of new requests: at Duration, or with ctx.
	// Requests in flight at Duration are let finish (they are bounded by
	// RequestTimeout); those in flight when ctx ends are cancelled.
	// In an open loop, requests due before Duration are still sent for a
	// grace period after it, late, rather than dropped: a request due just
	// before the end is not lost to a timer race, and a short backlog is
	// measured.
	stop, cancel := context.WithCancel(ctx)
	defer cancel()
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) / cfg.Rate)
	}
	start := time.Now()
	var deadline time.Time
	if cfg.Duration > 0 {
		deadline = start.Add(cfg.Duration)
		end := cfg.Duration
		if interval > 0 {
			end += min(time.Second, max(cfg.Duration/10, 10*time.Millisecond))
		}
		t := time.AfterFunc(end, cancel)
		defer t.Stop()
	}
	var tickets atomic.Int64 // requests handed out (and maybe not sent)
	workers := make([]*worker, cfg.Clients)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{hist: NewHistogram(), errs: map[string]int64{}}
		workers[i] = w
		rng := rand.New(rand.NewPCG(cfg.Seed, uint64(i)))
		r := &runner{cfg: &cfg, t: targets[i%len(targets)], w: w, rng: rng, ctx: ctx}
		r.init()
		wg.Go(func() {
			for {
				k := tickets.Add(1) - 1
				if cfg.Total > 0 && k >= cfg.Total {
					return
				}
				var due time.Time
				if interval > 0 {
					due = start.Add(time.Duration(k) * interval)
					if !deadline.IsZero() && !due.Before(deadline) {
						return
					}
					if wait := time.Until(due); wait > 0 {
						t := time.NewTimer(wait)
						select {
						case <-t.C:
						case <-stop.Done():
							t.Stop()
							return
						}
					}
				}
				if stop.Err() != nil {
					return
				}
				if due.IsZero() {
					due = time.Now()
				}
				r.one(due)
			}
		})
	}

	progressDone := make(chan struct{})
	var progressWG sync.WaitGroup
	if cfg.Progress != nil {
		progressWG.Go(func() {
			tk := time.NewTicker(cfg.ProgressInterval)
			defer tk.Stop()
			for {
				select {
				case <-tk.C:
				case <-progressDone:
					return
				}
				p := Progress{Elapsed: time.Since(start)}
				for _, w := range workers {
					p.Ops += w.ops.Load()
					p.Errors += w.nerr.Load()
				}
				cfg.Progress(p)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(progressDone)
	progressWG.Wait() // no Progress call after Run returns

	res := &Result{
		Workload:    cfg.Workload,
		Clients:     cfg.Clients,
		Rate:        cfg.Rate,
		Errors:      map[string]int64{},
		Interrupted: ctx.Err() != nil,
		Duration:    elapsed,
		Hist:        NewHistogram(),
	}
	var sent int64
	for _, w := range workers {
		res.Hist.Merge(w.hist)
		res.Ops += w.ops.Load()
		res.Misses += w.misses
		res.CASFailed += w.casNo
		sent += w.sent
		for c, n := range w.errs {
			res.Errors[c] += n
		}
	}
	if interval > 0 && cfg.Duration > 0 && !res.Interrupted {
		due := int64((cfg.Duration + interval - 1) / interval)
		if cfg.Total > 0 {
			due = min(due, cfg.Total)
		}
		res.Dropped = max(due-sent, 0)
	}
	res.DurationS = elapsed.Seconds()
	if elapsed > 0 {
		res.OpsPerS = float64(res.Ops) / elapsed.Seconds()
	}
	h := res.Hist
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	res.MeanMs, res.MinMs, res.MaxMs = ms(h.Mean()), ms(h.Min()), ms(h.Max())
	res.P50Ms, res.P90Ms = ms(h.Quantile(0.5)), ms(h.Quantile(0.9))
	res.P99Ms, res.P999Ms = ms(h.Quantile(0.99)), ms(h.Quantile(0.999))
	return res, nil
}

// runner sends the requests of one loop.
type runner struct {
	cfg *Config
	t   Target
	w   *worker
	rng *rand.Rand
	ctx context.Context

	keys, ends *keyer
	key, value []byte
	seq        uint64
}

func (r *runner) init() {
	r.keys, r.ends = newKeyer(r.cfg), newKeyer(r.cfg)
	r.value = make([]byte, r.cfg.ValueSize)
	for i := range r.value {
		r.value[i] = 'a' + byte(r.rng.IntN(26))
	}
}

// one sends one request (two for txn), due at due, and records it.
func (r *runner) one(due time.Time) {
	ctx := r.ctx
	if r.cfg.RequestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.cfg.RequestTimeout)
		defer cancel()
	}
	r.w.sent++
	k := r.rng.IntN(r.cfg.Keyspace)
	r.key = r.keys.key(k)
	var err error
	switch r.cfg.Workload {
	case WorkloadPut:
		err = r.t.Put(ctx, r.key, r.value)
	case WorkloadGet:
		err = r.get(ctx)
	case WorkloadMixed:
		if r.rng.Float64() < r.cfg.ReadRatio {
			err = r.get(ctx)
		} else {
			err = r.t.Put(ctx, r.key, r.value)
		}
	case WorkloadTxn:
		err = r.cas(ctx)
	case WorkloadRange:
		end := r.ends.rangeEnd(k, r.cfg.RangeLimit, r.cfg.Keyspace)
		err = r.t.Range(ctx, r.key, end, r.cfg.RangeLimit)
	}
	done := time.Now()
	if err != nil {
		if r.ctx.Err() != nil {
			return // cut short by the end of the run: not the server's doing
		}
		r.w.errs[r.cfg.ErrorCode(err)]++
		r.w.nerr.Add(1)
		return
	}
	r.w.hist.Record(done.Sub(due))
	r.w.ops.Add(1)
}

func (r *runner) get(ctx context.Context) error {
	_, err := r.t.Get(ctx, r.key, r.cfg.Serializable)
	if errors.Is(err, ErrNotFound) {
		r.w.misses++
		return nil
	}
	return err
}

// cas reads the key and swaps its value for a new one: the value with its
// first bytes replaced by a per-loop sequence number, so that it changes.
func (r *runner) cas(ctx context.Context) error {
	old, err := r.t.Get(ctx, r.key, r.cfg.Serializable)
	switch {
	case errors.Is(err, ErrNotFound):
		old = nil
	case err != nil:
		return err
	}
	r.seq++
	next := r.value
	if len(next) > 0 {
		var b [20]byte
		s := strconv.AppendUint(b[:0], r.seq, 36)
		copy(next, s)
	}
	ok, err := r.t.CAS(ctx, r.key, old, next)
	if err == nil && !ok {
		r.w.casNo++
	}
	return err
}
