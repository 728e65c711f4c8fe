/* model/unicode-data.c — (being written) */
