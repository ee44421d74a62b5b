package main

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Typed flags that say what they want: the flag package's own answer to
// --dead-after banana is "parse error". The flag package prints
// `invalid value "banana" for flag -dead-after: ` before these messages.

// durationFlag is a time.Duration of at least min.
type durationFlag struct {
	p   *time.Duration
	min time.Duration
}

func durationVar(fs *flag.FlagSet, p *time.Duration, name string, def, min time.Duration, usage string) {
	*p = def
	fs.Var(durationFlag{p, min}, name, usage)
}

func (f durationFlag) String() string {
	if f.p == nil {
		return ""
	}
	return f.p.String()
}

func (f durationFlag) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("want a duration such as 30s or 2m")
	}
	if d < f.min {
		if f.min == 1 {
			return fmt.Errorf("want a positive duration such as 30s or 2m")
		}
		return fmt.Errorf("want a duration of at least %v", f.min)
	}
	*f.p = d
	return nil
}

// intFlag is an int of at least min.
type intFlag struct {
	p   *int
	min int
}

func intVar(fs *flag.FlagSet, p *int, name string, def, min int, usage string) {
	*p = def
	fs.Var(intFlag{p, min}, name, usage)
}

func (f intFlag) String() string {
	if f.p == nil {
		return ""
	}
	return strconv.Itoa(*f.p)
}

func (f intFlag) Set(s string) error {
	v, err := parseWhole(s, int64(f.min))
	if err != nil {
		return err
	}
	*f.p = int(v)
	return nil
}

// int64Flag is an int64 of at least min.
type int64Flag struct {
	p   *int64
	min int64
}

func int64Var(fs *flag.FlagSet, p *int64, name string, def, min int64, usage string) {
	*p = def
	fs.Var(int64Flag{p, min}, name, usage)
}

func (f int64Flag) String() string {
	if f.p == nil {
		return ""
	}
	return strconv.FormatInt(*f.p, 10)
}

func (f int64Flag) Set(s string) error {
	v, err := parseWhole(s, f.min)
	if err != nil {
		return err
	}
	*f.p = v
	return nil
}

func parseWhole(s string, min int64) (int64, error) {
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, strconv.IntSize)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return 0, fmt.Errorf("want a whole number, at most %d", int64(^uint(0)>>1))
		}
		return 0, fmt.Errorf("want a whole number")
	}
	if v < min {
		return 0, fmt.Errorf("want a whole number, at least %d", min)
	}
	return v, nil
}
