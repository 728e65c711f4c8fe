/* model/quant.c — (being written) */
