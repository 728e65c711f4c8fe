/* model/unicode.c — (being written) */
