# frozen_string_literal: true

module Rustq
  # Turns a job class's limit options into the payload fields the engine reads, when pushing:
  #
  #   rustq_options unique_for: 10.minutes, unique_until: :start, unique_by: ->(args) { args.first(1) }
  #   rustq_options concurrency: {limit: 3, key: ->(account_id, *) { "acct:#{account_id}" }}
  #   rustq_options throttle: {limit: 100, period: 60, key: "gateway"}
  #
  # Keys are computed here, from the job's arguments, and stored in the payload: the engine never
  # runs Ruby for them and a retry keeps its key. Without a key, the class name is the key. The
  # native client checks the result (a limit below 1, a key that is not a String: Rustq::InvalidJob,
  # nothing written). The payload's shape: rustq_core's `limits` module.
  module Limits
    KEYED = %w[concurrency throttle].freeze
    # Options that only the pushing side reads; never written into the payload.
    LOCAL = %w[unique_by unique_conflict].freeze

    class << self
      # Every lock and limit in use, for operators:
      #   {"concurrency" => [{"key", "running" => [{"jid", "process", "alive"}], "waiting"}],
      #    "throttles" => [{"key", "reserved", "next_admission"}],
      #    "unique" => [{"digest", "jid", "expires_in"}]}
      def list
        JSON.parse(Native.limits_list)
      end

      # True when `item` carries anything that must be computed per job.
      def any?(item)
        item.key?("unique_for") || KEYED.any? { |name| item.key?(name) } || LOCAL.any? { |name| item.key?(name) }
      end

      # True when a bulk push of `item` must be resolved job by job (a key or unique_by computed
      # from each job's arguments).
      def per_job?(item)
        item["unique_by"] || KEYED.any? { |name| (spec = item[name]).is_a?(Hash) && callable?(spec[:key] || spec["key"]) }
      end

      # `item` with its limit options resolved for its `args`.
      def resolve(item)
        return item unless any?(item)

        item = item.dup
        args = item["args"].is_a?(Array) ? item["args"] : []
        KEYED.each { |name| item[name] = keyed(name, item[name], item, args) if item.key?(name) }
        if item.key?("unique_for")
          item["unique_for"] = seconds(item["unique_for"])
          item["unique_until"] = item["unique_until"].to_s if item["unique_until"].is_a?(Symbol)
          by = item["unique_by"]
          item["unique_args"] = unique_args(by, args) if by
        end
        LOCAL.each { |name| item.delete(name) }
        item
      end

      private

      def callable?(value) = value.respond_to?(:call)

      def keyed(name, spec, item, args)
        return spec unless spec.is_a?(Hash)

        spec = spec.transform_keys(&:to_s)
        key = spec.fetch("key", nil)
        key = key.call(*args) if callable?(key)
        key = item["class"].to_s if key.nil?
        key = key.to_s if key.is_a?(Symbol)
        out = {"key" => key, "limit" => spec["limit"]}
        out["period"] = seconds(spec["period"]) if name == "throttle"
        out
      end

      def unique_args(by, args)
        case by
        when Array then by.map { |index| args[index] }
        else
          raise InvalidJob, "Job 'unique_by' must be a lambda of the arguments or an Array of their indexes" unless callable?(by)

          Array(by.call(args))
        end
      end

      # ActiveSupport::Duration and other Numerics as seconds; anything else as given (the native
      # client names what is wrong with it).
      def seconds(value)
        value.is_a?(Numeric) || (defined?(ActiveSupport::Duration) && value.is_a?(ActiveSupport::Duration)) ? value.to_f : value
      end
    end
  end
end
