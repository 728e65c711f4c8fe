/* model/chat.c — (being written) */
