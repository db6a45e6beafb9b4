#include <tapegrad/tapegrad.hpp>

int main() { return tapegrad::version_major == 0 ? 0 : 1; }
