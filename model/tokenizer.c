/* model/tokenizer.c — (being written) */
