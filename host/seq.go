package host

import (
	"encoding/json"
	"os"
	"path/filepath"
)

// seqFile records the last plugin event hbd handled, so that a restarted
// hbd reports what happened while it was away and nothing twice.
const seqFile = "hbd.json"

type seqRecord struct {
	PluginPID int    `json:"plugin_pid"`
	LastSeq   uint64 `json:"last_seq"`
}

// loadSeq returns the saved position in the event stream of the plugin
// with this PID.
func loadSeq(stateDir string, pluginPID int) (uint64, bool) {
	b, err := os.ReadFile(filepath.Join(stateDir, seqFile))
	if err != nil {
		return 0, false
	}
	var r seqRecord
	if json.Unmarshal(b, &r) != nil || r.PluginPID != pluginPID {
		return 0, false
	}
	return r.LastSeq, true
}

// storeSeq saves the position atomically.
func storeSeq(stateDir string, pluginPID int, seq uint64) error {
	b, _ := json.Marshal(seqRecord{PluginPID: pluginPID, LastSeq: seq})
	tmp := filepath.Join(stateDir, seqFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(stateDir, seqFile))
}
