package main

import (
	"math"
	"slices"
)

// summary is the distribution of one series.
type summary struct {
	N   int
	P50 float64
	P99 float64
	Max float64
}

// summarize returns p50, p99 (nearest rank) and max of xs.
func summarize(xs []float64) summary {
	if len(xs) == 0 {
		return summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return summary{N: len(s), P50: rank(s, 0.50), P99: rank(s, 0.99), Max: s[len(s)-1]}
}

// rank is the nearest-rank percentile p of sorted s.
func rank(s []float64, p float64) float64 {
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// nsTo converts nanoseconds to unit ("ns", "us", "ms", "s").
func nsTo(ns float64, unit string) float64 {
	switch unit {
	case "us":
		return ns / 1e3
	case "ms":
		return ns / 1e6
	case "s":
		return ns / 1e9
	}
	return ns
}
