"""The front ends: OSC, MIDI and the command line. Thin: they parse, validate, submit and reply."""
