package plugin

// Record is plugin.json's content, for the external tests.
type Record = record

// Sentinels are the errors that must survive the process boundary.
var Sentinels = []error{ErrNotFound, ErrRunning, ErrNotRunning, ErrFull, ErrBadSpec, ErrShutdown, ErrUnavailable}

// ReadRecord and WriteRecord read and write plugin.json, for the external tests.
var (
	ReadRecord  = readRecord
	WriteRecord = writeRecord
)
