package bench

import (
	"bytes"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestBucketsAreContiguous(t *testing.T) {
	// Every value falls in the bucket whose range holds it, and the
	// buckets tile the line with no gap or overlap.
	var next int64
	for i := range numBuckets {
		lo, w := bucketRange(i)
		if lo != next {
			t.Fatalf("bucket %d starts at %d, want %d", i, lo, next)
		}
		if got := bucketOf(lo); got != i {
			t.Fatalf("bucketOf(%d) = %d, want %d", lo, got, i)
		}
		if got := bucketOf(lo + w - 1); got != i {
			t.Fatalf("bucketOf(%d) = %d, want %d", lo+w-1, got, i)
		}
		if i >= 2*subCount && float64(w)/float64(lo) > 1.0/subCount+1e-12 {
			t.Fatalf("bucket %d: width %d is more than 1/%d of %d", i, w, subCount, lo)
		}
		next = lo + w
	}
	if next-1 != maxValue {
		t.Fatalf("last bucket ends at %d, want %d", next-1, maxValue)
	}
}

// exactQuantile is the nearest-rank quantile of sorted values.
func exactQuantile(sorted []time.Duration, q float64) time.Duration {
	rank := int(math.Ceil(q * float64(len(sorted))))
	return sorted[max(rank, 1)-1]
}

func TestQuantilesMatchExactValues(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	dists := map[string]func() time.Duration{
		// Log-normal around 1ms, with a long tail.
		"lognormal": func() time.Duration { return time.Duration(math.Exp(rng.NormFloat64()*1.5) * 1e6) },
		"uniform":   func() time.Duration { return time.Duration(rng.Int64N(int64(50 * time.Millisecond))) },
		"tiny":      func() time.Duration { return time.Duration(rng.Int64N(300)) },
	}
	for name, gen := range dists {
		t.Run(name, func(t *testing.T) {
			// Split the values over several histograms and merge them,
			// as the request loops do.
			parts := []*Histogram{NewHistogram(), NewHistogram(), NewHistogram()}
			var vals []time.Duration
			for i := range 100000 {
				v := gen()
				vals = append(vals, v)
				parts[i%len(parts)].Record(v)
			}
			h := NewHistogram()
			for _, p := range parts {
				h.Merge(p)
			}
			slices.Sort(vals)
			if h.Count() != uint64(len(vals)) {
				t.Fatalf("count %d, want %d", h.Count(), len(vals))
			}
			if h.Min() != vals[0] || h.Max() != vals[len(vals)-1] {
				t.Fatalf("min/max %v/%v, want %v/%v", h.Min(), h.Max(), vals[0], vals[len(vals)-1])
			}
			for _, q := range []float64{0, 0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1} {
				got, want := h.Quantile(q), exactQuantile(vals, q)
				if diff := math.Abs(float64(got - want)); diff > 0.01*float64(want)+1 {
					t.Errorf("q%v = %v, want %v within 1%%", q, got, want)
				}
			}
			var sum float64
			for _, v := range vals {
				sum += float64(v)
			}
			if mean := sum / float64(len(vals)); math.Abs(float64(h.Mean())-mean) > 1e-6*mean+1 {
				t.Errorf("mean %v, want %v", h.Mean(), mean)
			}
		})
	}
}

func TestHistogramEdges(t *testing.T) {
	h := NewHistogram()
	if h.Quantile(0.5) != 0 || h.Max() != 0 || h.Min() != 0 || h.Mean() != 0 {
		t.Fatal("empty histogram is not all zero")
	}
	h.Record(-5)
	h.Record(1000 * time.Hour) // clamped
	if h.Min() != 0 || h.Max() != time.Duration(maxValue) {
		t.Fatalf("min %v max %v", h.Min(), h.Max())
	}
	h.Merge(NewHistogram())
	if h.Count() != 2 {
		t.Fatalf("count %d", h.Count())
	}
}

func TestHistogramText(t *testing.T) {
	h := NewHistogram()
	for range 90 {
		h.Record(300 * time.Microsecond)
	}
	for range 10 {
		h.Record(5 * time.Millisecond)
	}
	var b bytes.Buffer
	if err := h.WriteText(&b, 20); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	// 256µs-512µs up to 4.1ms-8.19ms: 5 power-of-two buckets.
	if len(lines) != 5 {
		t.Fatalf("got %d lines:\n%s", len(lines), b.String())
	}
	if !strings.Contains(lines[0], strings.Repeat("#", 20)) || !strings.Contains(lines[0], "90.00%") {
		t.Errorf("first line %q", lines[0])
	}
	if !strings.Contains(lines[4], "10.00%") || !strings.Contains(lines[4], " 10") {
		t.Errorf("last line %q", lines[4])
	}
	t.Logf("\n%s", b.String())
}
