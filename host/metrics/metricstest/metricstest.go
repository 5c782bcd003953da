// Package metricstest checks hb's metrics with Prometheus's own text
// parser. Only tests import it: hbd and hbctl do not link the parser.
package metricstest

import (
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Parse parses text with Prometheus's own text-format parser, strict
// (legacy) names, and checks what the parser lets pass: each series once,
// and every histogram's +Inf bucket equal to its count with cumulative
// buckets.
func Parse(t testing.TB, text string) map[string]*dto.MetricFamily {
	t.Helper()
	if !strings.HasSuffix(text, "\n") {
		t.Fatalf("exposition does not end with a line feed: %q", text[max(0, len(text)-40):])
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("Prometheus text parser: %v\n%s", err, text)
	}
	for name, f := range fams {
		seen := map[uint64]bool{}
		for _, m := range f.GetMetric() {
			key := model.LabelsToSignature(labelMap(m))
			if seen[key] {
				t.Errorf("%s: series %v twice", name, labelMap(m))
			}
			seen[key] = true
			if h := m.GetHistogram(); h != nil {
				var prev uint64
				for _, b := range h.GetBucket() {
					if b.GetCumulativeCount() < prev {
						t.Errorf("%s: bucket le=%g has %d, less than the one below (%d)", name, b.GetUpperBound(), b.GetCumulativeCount(), prev)
					}
					prev = b.GetCumulativeCount()
				}
				if prev > h.GetSampleCount() {
					t.Errorf("%s: buckets count %d, _count %d", name, prev, h.GetSampleCount())
				}
			}
		}
	}
	return fams
}

func labelMap(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

// Value is the value of the series of family name with labels lbl (k, v
// pairs), and whether there is one.
func Value(fams map[string]*dto.MetricFamily, name string, lbl ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		l := labelMap(m)
		for i := 0; i+1 < len(lbl); i += 2 {
			if l[lbl[i]] != lbl[i+1] {
				continue next
			}
		}
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}
