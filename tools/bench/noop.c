/* The trivial static executable of the floor measurement. */
int main(void) { return 0; }
