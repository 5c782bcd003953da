package plugin

// Internals the external tests (package plugin_test) use.
type Record = record

// Sentinels are the errors that must survive the process boundary.
var Sentinels = []error{ErrNotFound, ErrRunning, ErrNotRunning, ErrFull, ErrBadSpec, ErrShutdown, ErrUnavailable}

var (
	ReadRecord  = readRecord
	WriteRecord = writeRecord
)
