package bench

import (
	"fmt"
	"io"
	"math"
	"math/bits"
	"strings"
	"time"
)

// Histogram records latencies in log-linear buckets, as HdrHistogram does:
// every power of two is split into 2^subBits equal buckets, so a recorded
// value is known to within 1/2^subBits (0.8%) of itself, and a quantile read
// from the bucket middle is within 0.4%. Values below 2^(subBits+1)
// nanoseconds are kept exactly.
//
// Recording is an index computation and an increment, with no allocation.
// A Histogram is not safe for concurrent use: give each goroutine its own
// and Merge them at the end.
type Histogram struct {
	counts [numBuckets]uint64
	n      uint64
	sum    float64 // nanoseconds
	min    int64
	max    int64
}

const (
	subBits  = 7
	subCount = 1 << subBits // buckets per power of two
	// maxExp bounds the recorded values to below 2^(maxExp+subBits+1)
	// nanoseconds, about 4.9 hours; longer values are clamped.
	maxExp     = 37
	numBuckets = (maxExp + 2) * subCount
	maxValue   = int64(1)<<(maxExp+subBits+1) - 1
)

// NewHistogram returns an empty Histogram.
func NewHistogram() *Histogram { return &Histogram{min: math.MaxInt64} }

// bucketOf returns the bucket index of v >= 0.
func bucketOf(v int64) int {
	if v < 2*subCount {
		return int(v)
	}
	e := bits.Len64(uint64(v)) - (subBits + 1)
	return e*subCount + int(v>>e)
}

// bucketRange returns the smallest value of bucket i and its width.
func bucketRange(i int) (lo, width int64) {
	if i < 2*subCount {
		return int64(i), 1
	}
	e := i>>subBits - 1
	m := int64(i&(subCount-1)) + subCount
	return m << e, 1 << e
}

// Record adds one latency. Negative values count as 0.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	if v > maxValue {
		v = maxValue
	}
	h.counts[bucketOf(v)]++
	h.n++
	h.sum += float64(v)
	if v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
}

// Merge adds every value recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.min = min(h.min, o.min)
	h.max = max(h.max, o.max)
}

// Count returns the number of values recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Min returns the smallest value recorded, exactly; 0 when empty.
func (h *Histogram) Min() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.min)
}

// Max returns the largest value recorded, exactly; 0 when empty.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean returns the mean of the values recorded; 0 when empty.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Quantile returns the value at quantile q in [0, 1]: the smallest recorded
// value v such that at least q of the values are <= v, to within the bucket
// precision. Quantile(1) is Max, exactly. It returns 0 when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	if q >= 1 {
		return time.Duration(h.max)
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, w := bucketRange(i)
			v := lo + (w-1)/2 // the middle of the bucket
			return time.Duration(min(max(v, h.min), h.max))
		}
	}
	return time.Duration(h.max)
}

// WriteText writes a bar chart of the distribution in power-of-two
// buckets, from the bucket of the smallest value to that of the largest,
// one line per bucket: its range, a bar, its share and its count.
func (h *Histogram) WriteText(w io.Writer, width int) error {
	if h.n == 0 {
		_, err := fmt.Fprintln(w, "  (no values)")
		return err
	}
	// Sum the fine buckets into power-of-two ones: [2^k, 2^(k+1)) ns,
	// starting at 1µs (2^10 ns), with everything below in the first.
	const firstExp = 10
	var pow [64]uint64
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		lo, _ := bucketRange(i)
		k := max(bits.Len64(uint64(lo))-1, firstExp)
		pow[k] += c
	}
	first, last := -1, 0
	var peak uint64
	for k, c := range pow {
		if c == 0 {
			continue
		}
		if first < 0 {
			first = k
		}
		last = k
		peak = max(peak, c)
	}
	for k := first; k <= last; k++ {
		lo := time.Duration(1) << k
		if k == firstExp {
			lo = 0
		}
		hi := time.Duration(1) << (k + 1)
		c := pow[k]
		bar := int(math.Round(float64(c) / float64(peak) * float64(width)))
		if c > 0 && bar == 0 {
			bar = 1
		}
		_, err := fmt.Fprintf(w, "  %9s - %-9s |%-*s| %6.2f%%  %d\n",
			fmtDuration(lo), fmtDuration(hi), width, strings.Repeat("#", bar),
			100*float64(c)/float64(h.n), c)
		if err != nil {
			return err
		}
	}
	return nil
}

// fmtDuration prints d with 3 significant digits in a fitting unit.
func fmtDuration(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", int64(d))
	case d < time.Millisecond:
		return fmt.Sprintf("%.3gµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.3gms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.3gs", d.Seconds())
	}
}
