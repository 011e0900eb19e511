// gdr2-bench: placeholder until the benchmark lands.
#include <cstdio>
int main() { std::puts("gdr2-bench: no benchmarks yet"); return 0; }
