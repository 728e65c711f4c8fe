/* model/gguf-write.c — (being written) */
