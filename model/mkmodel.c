/* model/mkmodel.c — (being written) */
