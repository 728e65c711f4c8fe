/* model/gguf.c — (being written) */
