package host

import (
	"encoding/json"
	"os"
	"path/filepath"
	"time"
)

// seqFile records the last plugin event hbd handled, so that a restarted
// hbd reports what happened while it was away and nothing twice, and each
// service's last reason, so that the next hbd still says why a service is
// fatal, stopped or backing off.
const seqFile = "hbd.json"

type seqRecord struct {
	PluginPID int    `json:"plugin_pid"`
	LastSeq   uint64 `json:"last_seq"`
	// Reasons holds each service's last reason, by name.
	Reasons map[string]savedReason `json:"reasons,omitempty"`
}

// savedReason is a service's reason as hbd last recorded it, with the
// incarnation and state it was about: the next hbd takes it only when the
// table's slot still shows that generation and state.
type savedReason struct {
	Generation uint64    `json:"generation"`
	State      string    `json:"state"`
	Reason     string    `json:"reason"`
	At         time.Time `json:"at"`
	Since      time.Time `json:"since"`
}

// loadRecord reads the saved record ({} when there is none).
func loadRecord(stateDir string) seqRecord {
	var r seqRecord
	b, err := os.ReadFile(filepath.Join(stateDir, seqFile))
	if err == nil && json.Unmarshal(b, &r) != nil {
		r = seqRecord{}
	}
	return r
}

// loadSeq returns the saved position in the event stream of the plugin
// with this PID.
func loadSeq(stateDir string, pluginPID int) (uint64, bool) {
	r := loadRecord(stateDir)
	if r.PluginPID == 0 || r.PluginPID != pluginPID {
		return 0, false
	}
	return r.LastSeq, true
}

// storeRecord saves the record atomically.
func storeRecord(stateDir string, r seqRecord) error {
	b, _ := json.Marshal(r)
	tmp := filepath.Join(stateDir, seqFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(stateDir, seqFile))
}
