include $(sort $(wildcard $(BR2_EXTERNAL_NARUN_PATH)/package/*/*.mk))
