// Compiled only to build the precompiled header the guide programs share.
