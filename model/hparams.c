/* model/hparams.c — (being written) */
