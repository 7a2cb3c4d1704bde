/* The smallest guest, for the startup benchmark: one result line, then shutdown. */
#include "runtime.h"

GUEST("minimal");

void guest_main(void) { result(1, "minimal", ""); }
