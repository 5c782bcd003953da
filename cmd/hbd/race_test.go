//go:build race

package main

// raceEnabled: the test binary is built with -race, so hbd is built with it too.
const raceEnabled = true
